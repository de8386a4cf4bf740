"""A stand-in agent program for the env=external tests (stdlib only, so it starts fast).

usage: python stub_agent.py MODE [PIDFILE]; MODE is one of
    good      two calls, the second extending the first, then reward 1.0
    separate  two unrelated calls, then reward 0.0
    crash     one call, then exit code 3
    hang      starts a grandchild (its pid written to PIDFILE), then sleeps
    noreward  one call, exit 0 without a reward
    nocall    reports a reward without calling the model
    steal     posts a reward to the other rollout of two (refused), one call, its own reward
              0.0, then a second reward (refused)
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

BASE = os.environ["OPENAI_BASE_URL"]
KEY = os.environ["OPENAI_API_KEY"]
TASK = json.loads(os.environ["AGENTRL_TASK"])


def post(url, body):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def chat(messages):
    return post(BASE + "/chat/completions", {"model": "m", "messages": messages})


def main(mode):
    msgs = [
        {"role": "system", "content": TASK["system"]},
        {"role": "user", "content": TASK["prompt"]},
    ]
    if mode == "nocall":
        post(os.environ["AGENTRL_REWARD_URL"], {"reward": 1.0})
        return 0
    if mode == "steal":
        rid = os.environ["AGENTRL_ROLLOUT_ID"]
        other = "rollout-1" if rid == "rollout-0" else "rollout-0"
        refused = 0
        try:
            post(os.environ["AGENTRL_REWARD_URL"].replace(rid, other), {"reward": 1.0})
        except urllib.error.HTTPError as e:
            refused += e.code == 403
        chat(msgs)
        post(os.environ["AGENTRL_REWARD_URL"], {"reward": 0.0})
        try:
            post(os.environ["AGENTRL_REWARD_URL"], {"reward": 1.0})
        except urllib.error.HTTPError as e:
            refused += e.code == 409
        return 0 if refused == 2 else 4
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(sys.argv[2], "w") as f:
            f.write(str(child.pid))
        time.sleep(120)
    reply = chat(msgs)["choices"][0]["message"]
    if mode == "crash":
        return 3
    if mode == "noreward":
        return 0
    if mode == "good":
        msgs += [reply, {"role": "tool", "content": "5"}]
    else:
        msgs = [{"role": "user", "content": "something else"}]
    chat(msgs)
    post(os.environ["AGENTRL_REWARD_URL"], {"reward": 1.0 if mode == "good" else 0.0})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
