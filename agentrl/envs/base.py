"""The Env contract.

An env suite (what ``conf/env/*.yaml`` instantiates) owns a task source with deterministic
train/val/test splits, makes fresh episode envs, and ships an oracle and a verifier::

    suite.tasks("train") -> list[Task]
    env = suite.make(); obs = env.reset(task); obs, reward, done, info = env.step(action_text)
    suite.oracle(task, rng) -> list[str]        # a demonstration: the actions, in order
    suite.verify(task, env) -> bool             # the outcome of a finished episode

Optional, for suites that own resources or count their own faults::

    suite.close()                               # release servers, browsers, sandboxes (idempotent);
                                                # training and evaluation call ``close_suite``
                                                # on every exit path
    suite.metrics(trajectories) -> dict         # extra counts logged each step (``env/...``)

Episode envs are text in, text out. ``step`` never raises on a malformed action: it returns an
observation the agent can read (and ``info["invalid"] = True``). The turn cap is the env's.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from agentrl.types import Task


class EpisodeEnv(Protocol):
    system_prompt: str
    max_turns: int

    def reset(self, task: Task) -> str: ...

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]: ...

    def render(self) -> str: ...


class EnvSuite(Protocol):
    name: str
    system_prompt: str
    max_turns: int
    # tokens the policy may generate in one turn
    max_action_tokens: int
    # strings that end a turn when generated (besides the tokenizer's end-of-turn token)
    stop_strings: list[str]

    def tasks(self, split: str) -> list[Task]: ...

    def make(self) -> EpisodeEnv: ...

    def oracle(self, task: Task, rng: random.Random) -> list[str]: ...

    def verify(self, task: Task, env: EpisodeEnv) -> bool: ...


def record_step(
    env: Any, action: str, obs: str, reward: float, info: dict[str, Any]
) -> tuple[str, float, bool, dict[str, Any]]:
    """The end of every env's ``step``: the turn cap (the last allowed turn ends the episode as
    truncated, with no observation), ``info["truncated"]``, and the (action, observation,
    reward) history that ``render`` shows. Returns what ``step`` returns."""
    if not env.done and len(env.history) + 1 >= env.max_turns:
        env.done = env.truncated = True
        obs = ""
    info["truncated"] = env.truncated
    env.history.append((action, obs, reward))
    return obs, reward, env.done, info


def transcript(
    system_prompt: str,
    prompt: str,
    history: list[tuple[str, str, float]],
    reward_format: str = "{}",
    indent_observations: bool = False,
) -> list[str]:
    """The lines every env's ``render`` starts with: system, user, then each (action, observation,
    reward) of ``history`` (empty observations and zero rewards left out)."""
    lines = [f"system: {system_prompt}", f"user: {prompt}"]
    for action, obs, reward in history:
        lines.append(f"agent: {action}")
        if obs:
            lines.append("env: " + (obs.replace("\n", "\n     ") if indent_observations else obs))
        if reward:
            lines.append("reward: " + reward_format.format(reward))
    return lines


def close_suite(suite: Any) -> None:
    """Release what ``suite`` holds (its ``close()``, when it has one)."""
    close = getattr(suite, "close", None)
    if callable(close):
        close()
