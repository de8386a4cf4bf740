"""An agent that calls the policy with two system prompts: a planner and an executor sharing it
(the official ``openai`` client; ``run`` is an env=external entry point).

    1. planner    [PLANNER, task]                          -> a plan
    2. executor   [the task's system prompt, task + plan]  -> examples/openai_agent's calc loop
    3. planner    its conversation continued with the executor's answer -> a review

The planner's two calls extend each other, as do the executor's; the two conversations do not
(their system prompts differ), so a rollout is two sequences, each trained with its reward.
The reward is 1.0 for a right answer, plus 0.1 for an odd rollout index: the two samples of a
group (consecutive indices) then differ even when the tiny policy solves all or nothing, so
every RL step of the tests applies an update.
"""

from __future__ import annotations

import os

from openai import OpenAI

from examples.openai_agent.agent import solve

PLANNER = "You plan. Name the calc steps that solve the task, briefly."


def ask(client: OpenAI, messages: list[dict]) -> str:
    reply = client.chat.completions.create(model="agentrl-policy", messages=messages, max_tokens=24)
    return reply.choices[0].message.content or ""


def run(task: dict, base_url: str, api_key: str) -> float:
    with OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300) as client:
        planner = [
            {"role": "system", "content": PLANNER},
            {"role": "user", "content": task["prompt"]},
        ]
        plan = ask(client, planner)
        answer = solve(client, {**task, "prompt": f"{task['prompt']}\nPlan: {plan}"})
        planner += [
            {"role": "assistant", "content": plan},
            {"role": "user", "content": f"The executor answered {answer}. Reply OK or a fix."},
        ]
        ask(client, planner)
    index = int(os.environ["AGENTRL_ROLLOUT_ID"].rsplit("-", 1)[1])
    return float(answer == task["answer"]) + 0.1 * (index % 2)
