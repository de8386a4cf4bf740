"""A calculator agent on OpenAI's Responses API (``client.responses.create``), for the gateway tests.

usage: python responses_agent.py [MODE]; MODE is one of
    resend    each turn sends the whole conversation as input items (the OpenAI Agents SDK's way)
    previous  each turn sends only the new items with ``previous_response_id``
    stream    as resend, each turn streamed (``client.responses.stream``)

It executes the ``calc`` function calls the model makes, answers them with
``function_call_output`` items, and reports reward 1.0 when its final answer is the task's.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request

from openai import OpenAI

CALC = {
    "type": "function",
    "name": "calc",
    "description": "Compute one operation A op B, op one of + - *.",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
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


def turn(client: OpenAI, mode: str, **kw):
    kw.update(model="agentrl-policy", tools=[CALC], max_output_tokens=24)
    if mode == "stream":
        with client.responses.stream(**kw) as stream:
            return stream.get_final_response()
    return client.responses.create(**kw)


def solve(client: OpenAI, task: dict, mode: str) -> int | None:
    items: list = [{"role": "user", "content": task["prompt"]}]
    previous = None
    for _ in range(int(task.get("max_turns", 6))):
        chain = {"previous_response_id": previous} if previous else {}
        resp = turn(client, mode, instructions=task["system"], input=items, **chain)
        if mode == "previous":
            previous, items = resp.id, []
        else:
            items += [o.model_dump(exclude_none=True) for o in resp.output]
        calls = [o for o in resp.output if o.type == "function_call"]
        for call in calls:
            result = calc(str(json.loads(call.arguments).get("expression", "")))
            items.append(
                {"type": "function_call_output", "call_id": call.call_id, "output": result}
            )
        if calls:
            continue
        m = _ANSWER.search(resp.output_text)
        if m is not None:
            return int(m.group(1))
        items.append({"role": "user", "content": "error: call calc or give <answer>N</answer>"})
    return None


def main(mode: str) -> int:
    task = json.loads(os.environ["AGENTRL_TASK"])
    client = OpenAI(max_retries=0, timeout=300)  # OPENAI_BASE_URL and OPENAI_API_KEY from env
    answer = solve(client, task, mode)
    success = answer is not None and answer == task["answer"]
    req = urllib.request.Request(
        os.environ["AGENTRL_REWARD_URL"],
        data=json.dumps({"reward": float(success), "success": success}).encode(),
        headers={
            "Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "resend"))
