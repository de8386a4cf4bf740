"""A calculator agent written with the OpenAI Agents SDK (``openai-agents``), trainable by agentrl.

An ordinary SDK agent: an ``Agent`` with a ``@function_tool`` run by ``Runner``, in the SDK's
default mode, the Responses API (``POST /v1/responses``); ``run_chat_completions`` is the same
agent on the Chat Completions API. The only thing pointed at agentrl is the endpoint: the
``AsyncOpenAI`` client the SDK's ``OpenAIProvider`` uses gets the gateway's base URL and the
rollout's key (``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``). Tracing is off: the SDK would
otherwise export traces to OpenAI's servers.

    pip install -e '.[agents]'
    python launch.py experiment=openai_agent env.entry_point=examples.agents_sdk.agent:run
    python launch.py experiment=openai_agent env.command="python examples/agents_sdk/agent.py"

``run(task, base_url, api_key) -> reward`` is the entry point (long-lived workers); run as a
program (``--chat-completions`` for that API) it reads ``AGENTRL_TASK`` and posts its reward to
``AGENTRL_REWARD_URL`` (docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import urllib.request

from agents import (
    Agent,
    MaxTurnsExceeded,
    ModelBehaviorError,
    ModelSettings,
    OpenAIProvider,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

# no trace export to api.openai.com (there is no internet at training time, and nothing to send)
set_tracing_disabled(True)

_CALC = re.compile(r"\s*(-?\d{1,6})\s*([-+*])\s*(-?\d{1,6})\s*")
_ANSWER = re.compile(r"<answer>\s*(-?\d+)\s*</answer>")


@function_tool
def calc(expression: str) -> str:
    """Compute one operation A op B, op one of + - *.

    Args:
        expression: e.g. 12+7
    """
    m = _CALC.fullmatch(expression)
    if m is None:
        return "error: calc takes A op B, op one of + - *"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return str(a + b if op == "+" else a - b if op == "-" else a * b)


async def solve(task: dict, config: RunConfig) -> int | None:
    """Run the agent until it answers; a reply without an answer is told so and the run goes
    on (the whole conversation resent), within the task's turn budget (model calls)."""
    agent = Agent(
        name="calculator",
        instructions=task.get("system"),
        tools=[calc],
        model="agentrl-policy",
        model_settings=ModelSettings(max_tokens=24),
    )
    items: str | list = task["prompt"]
    left = int(task.get("max_turns", 6))
    while left > 0:
        try:
            result = await Runner.run(agent, items, max_turns=left, run_config=config)
        except MaxTurnsExceeded:
            return None
        except ModelBehaviorError:
            # the SDK raises on a reply it cannot use, e.g. one cut off at max_tokens (the
            # Responses API's status "incomplete"): the task is not solved, reward 0 (not a
            # crashed rollout, which would leave the bad reply out of training)
            return None
        m = _ANSWER.search(str(result.final_output))
        if m is not None:
            return int(m.group(1))
        left -= len(result.raw_responses)
        items = result.to_input_list()
        items.append({"role": "user", "content": "error: call calc or give <answer>N</answer>"})
    return None


async def rollout(task: dict, base_url: str, api_key: str, responses: bool) -> float:
    async with AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0) as client:
        provider = OpenAIProvider(openai_client=client, use_responses=responses)
        config = RunConfig(model_provider=provider, tracing_disabled=True)
        answer = await solve(task, config)
    return float(answer is not None and answer == task["answer"])


def run(task: dict, base_url: str, api_key: str) -> float:
    """One rollout on the Responses API (the SDK's default): 1.0 for a right answer, else 0.0."""
    return asyncio.run(rollout(task, base_url, api_key, responses=True))


def run_chat_completions(task: dict, base_url: str, api_key: str) -> float:
    """One rollout on the Chat Completions API (``OpenAIProvider(use_responses=False)``)."""
    return asyncio.run(rollout(task, base_url, api_key, responses=False))


def main(argv: list[str]) -> int:
    """One rollout as a program: the task and the endpoint from the environment."""
    task = json.loads(os.environ["AGENTRL_TASK"])
    key = os.environ["OPENAI_API_KEY"]
    fn = run_chat_completions if "--chat-completions" in argv else run
    reward = fn(task, os.environ["OPENAI_BASE_URL"], key)
    req = urllib.request.Request(
        os.environ["AGENTRL_REWARD_URL"],
        data=json.dumps({"reward": reward, "success": reward > 0}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
