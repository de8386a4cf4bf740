"""Entry points for the env=external worker-mode tests (stdlib only): ``module:function``s of
``tests.gateway.stub_entry``, each ``(task, base_url, api_key) -> reward``.

    good      two calls, the second extending the first; returns 1.0
    report    one call, posts 0.5 to AGENTRL_REWARD_URL itself, returns None
    boom      one call, then raises ValueError
    hang      starts a grandchild (its pid written to the file AGENTRL_TEST_PIDFILE names), then
              sleeps
    by_task   what a task's prompt asks for: hang / boom / good, so one run mixes them
    bad       one call, returns a string
"""

import json
import os
import subprocess
import sys
import time
import urllib.request


def post(url, key, body):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def chat(base_url, key, messages):
    body = {"model": "m", "messages": messages}
    return post(base_url + "/chat/completions", key, body)["choices"][0]["message"]


def good(task, base_url, api_key):
    msgs = [
        {"role": "system", "content": task["system"]},
        {"role": "user", "content": task["prompt"]},
    ]
    reply = chat(base_url, api_key, msgs)
    chat(base_url, api_key, msgs + [reply, {"role": "tool", "content": "5"}])
    return 1.0


def report(task, base_url, api_key):
    chat(base_url, api_key, [{"role": "user", "content": task["prompt"]}])
    post(os.environ["AGENTRL_REWARD_URL"], api_key, {"reward": 0.5})
    return None


def boom(task, base_url, api_key):
    chat(base_url, api_key, [{"role": "user", "content": task["prompt"]}])
    raise ValueError(f"boom in {task['id']}")


def hang(task, base_url, api_key):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.environ["AGENTRL_TEST_PIDFILE"], "w") as f:
        f.write(str(child.pid))
    time.sleep(120)


def bad(task, base_url, api_key):
    chat(base_url, api_key, [{"role": "user", "content": task["prompt"]}])
    return "1.0"


def by_task(task, base_url, api_key):
    return {"hang": hang, "boom": boom}.get(task["prompt"], good)(task, base_url, api_key)
