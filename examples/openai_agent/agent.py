"""A calculator agent written with the official ``openai`` client, trainable by agentrl.

It knows nothing of agentrl: it reads its task, talks to whatever OpenAI-compatible endpoint
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` name, executes the ``calc`` tool the model calls through
function calling, and reports its reward (1.0 when its final answer is right) over HTTP::

    AGENTRL_TASK        {"prompt": "Compute (14-13)*4", "answer": 4, "system": ..., "max_turns": 6}
    AGENTRL_REWARD_URL  POST {"reward": r, "success": bool} with the same bearer token

The same agent as an entry point, for a pool of long-lived workers (no Python start per
rollout): ``run(task, base_url, api_key) -> reward``, with ``task`` the dict above; the reward is
returned instead of posted (``env.entry_point=examples.openai_agent.agent:run``).

Train it: ``python launch.py experiment=openai_agent`` (docs/gateway.md).
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request

from openai import OpenAI

CALC_TOOL = {
    "type": "function",
    "function": {
        "name": "calc",
        "description": "Compute one operation A op B, op one of + - *.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. 12+7"}},
            "required": ["expression"],
        },
    },
}
_CALC = re.compile(r"\s*(-?\d{1,6})\s*([-+*])\s*(-?\d{1,6})\s*")
_ANSWER = re.compile(r"<answer>\s*(-?\d+)\s*</answer>")


def calc(expression: str) -> str:
    m = _CALC.fullmatch(expression)
    if m is None:
        return "error: calc takes A op B, op one of + - *"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return str(a + b if op == "+" else a - b if op == "-" else a * b)


def solve(client: OpenAI, task: dict) -> int | None:
    """Chat with the model until it answers (or the turn budget is spent); the answer or None."""
    messages = [{"role": "system", "content": task["system"]}] if task.get("system") else []
    messages.append({"role": "user", "content": task["prompt"]})
    for _ in range(int(task.get("max_turns", 6))):
        reply = client.chat.completions.create(
            model="agentrl-policy", messages=messages, tools=[CALC_TOOL], max_tokens=24
        )
        msg = reply.choices[0].message
        messages.append(msg.model_dump(exclude_none=True))
        if msg.tool_calls:
            for call in msg.tool_calls:
                args = json.loads(call.function.arguments or "{}")
                result = calc(str(args.get("expression", "")))
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            continue
        m = _ANSWER.search(msg.content or "")
        if m is not None:
            return int(m.group(1))
        messages.append({"role": "user", "content": "error: call calc or give <answer>N</answer>"})
    return None


def report(reward: float, success: bool) -> None:
    req = urllib.request.Request(
        os.environ["AGENTRL_REWARD_URL"],
        data=json.dumps({"reward": reward, "success": success}).encode(),
        headers={
            "Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def run(task: dict, base_url: str, api_key: str) -> float:
    """One rollout: 1.0 when the final answer is right, else 0.0 (the entry point)."""
    with OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300) as client:
        answer = solve(client, task)
    return float(answer is not None and answer == task["answer"])


def main() -> int:
    """One rollout as a program: the task and the endpoint from the environment."""
    task = json.loads(os.environ["AGENTRL_TASK"])
    reward = run(task, os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"])
    report(reward, reward > 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
