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
    suite.metrics(trajectories) -> dict         # extra counts logged each step under ``env/``
                                                # (by ``agentrl.metrics_channel``; an env step
                                                # may also count in ``info["metrics"]``)

Episode envs are text in, text out. ``step`` never raises on a malformed action: it returns an
observation the agent can read (and ``info["invalid"] = True``). The turn cap is the env's.

Every env is a subpackage of ``agentrl.envs`` and builds on the helpers here, written once:
``SPLITS`` and ``split_tasks`` (``tasks(split)``), ``check_ints``/``check_probs``/``check_numbers``
(constructor arguments), ``record_step`` (the turn cap, ``info["truncated"]``, the history),
``ERR_DONE`` and ``render_episode`` (the transcript and its footer).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from agentrl.types import Task

# the task splits of every suite, in this order
SPLITS = ("train", "val", "test")
# the observation of a step after the episode ended
ERR_DONE = "error: episode is over"


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


def split_tasks(splits: dict[str, list[Task]], split: str) -> list[Task]:
    """A suite's ``tasks(split)``: a copy of ``splits[split]``; an unknown split is a ValueError
    naming the valid ones."""
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return list(splits[split])


def check_ints(args: dict[str, Any], keys: Iterable[str], minimum: int = 1) -> None:
    """A suite's argument check: each of ``keys`` is an int >= ``minimum`` (one-line error)."""
    for key in keys:
        if not isinstance(args[key], int) or args[key] < minimum:
            raise ValueError(f"{key} must be an int >= {minimum}, got {args[key]!r}")


def check_numbers(args: dict[str, Any], keys: Iterable[str]) -> None:
    """A suite's argument check: each of ``keys`` is a number >= 0 (one-line error)."""
    for key in keys:
        if not isinstance(args[key], (int, float)) or args[key] < 0:
            raise ValueError(f"{key} must be a number >= 0, got {args[key]!r}")


def check_probs(args: dict[str, Any], keys: Iterable[str]) -> None:
    """A suite's argument check: each of ``keys`` is a probability in [0, 1] (one-line error)."""
    for key in keys:
        p = args[key]
        if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{key} must be in [0, 1], got {p!r}")


def render_episode(env: Any, verdict: Callable[[], str], **transcript_args: Any) -> str:
    """Every env's ``render``: ``(not started)`` before ``reset``; else the ``transcript`` and
    the footer, ``[truncated after N turns]`` for an episode the turn cap ended, ``verdict()``
    (e.g. ``[answer 52: correct, expected 52]``) for one that ended otherwise."""
    if env.task is None:
        return "(not started)"
    lines = transcript(env.system_prompt, env.task.prompt, env.history, **transcript_args)
    if env.truncated:
        lines.append(f"[truncated after {env.max_turns} turns]")
    elif env.done:
        lines.append(verdict())
    return "\n".join(lines)


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
