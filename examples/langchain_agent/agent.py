"""A calculator agent written with LangChain (``langchain-openai``), trainable by agentrl.

An ordinary LangChain tool-calling loop: ``ChatOpenAI(...).bind_tools([calc])``, the tool calls
the model makes executed and answered with ``ToolMessage``s, until the model answers
``<answer>N</answer>``. The only thing pointed at agentrl is the endpoint: ``ChatOpenAI`` gets
the gateway's base URL and the rollout's key (``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``).

    pip install -e '.[agents]'
    python launch.py experiment=openai_agent env.entry_point=examples.langchain_agent.agent:run
    python launch.py experiment=openai_agent env.command="python examples/langchain_agent/agent.py"

``run(task, base_url, api_key) -> reward`` is the entry point (long-lived workers); run as a
program it reads ``AGENTRL_TASK`` and posts its reward to ``AGENTRL_REWARD_URL`` (docs/gateway.md).
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

_CALC = re.compile(r"\s*(-?\d{1,6})\s*([-+*])\s*(-?\d{1,6})\s*")
_ANSWER = re.compile(r"<answer>\s*(-?\d+)\s*</answer>")


@tool
def calc(expression: str) -> str:
    """Compute one operation A op B, op one of + - * (e.g. 12+7)."""
    m = _CALC.fullmatch(expression)
    if m is None:
        return "error: calc takes A op B, op one of + - *"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return str(a + b if op == "+" else a - b if op == "-" else a * b)


def solve(llm, task: dict) -> int | None:
    """The tool-calling loop: the model's answer, or None when the turn budget is spent."""
    messages = [SystemMessage(task["system"])] if task.get("system") else []
    messages.append(HumanMessage(task["prompt"]))
    for _ in range(int(task.get("max_turns", 6))):
        reply = llm.invoke(messages)
        messages.append(reply)
        if reply.tool_calls:
            for call in reply.tool_calls:
                messages.append(calc.invoke(call))  # a ToolMessage answering this call
            continue
        m = _ANSWER.search(reply.text)
        if m is not None:
            return int(m.group(1))
        messages.append(HumanMessage("error: call calc or give <answer>N</answer>"))
    return None


def run(task: dict, base_url: str, api_key: str) -> float:
    """One rollout: 1.0 when the final answer is right, else 0.0 (the entry point)."""
    llm = ChatOpenAI(
        model="agentrl-policy", base_url=base_url, api_key=api_key, max_tokens=24, max_retries=0
    ).bind_tools([calc])
    answer = solve(llm, task)
    return float(answer is not None and answer == task["answer"])


def main() -> int:
    """One rollout as a program: the task and the endpoint from the environment."""
    task = json.loads(os.environ["AGENTRL_TASK"])
    key = os.environ["OPENAI_API_KEY"]
    reward = run(task, os.environ["OPENAI_BASE_URL"], key)
    req = urllib.request.Request(
        os.environ["AGENTRL_REWARD_URL"],
        data=json.dumps({"reward": reward, "success": reward > 0}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
