"""A user's own env, outside the agentrl package: guess a secret number from higher/lower hints.

Nothing in agentrl knows this module. A config of the user's own (``conf/env/my_env.yaml`` beside
this file) names it with ``_target_``; Hydra finds that config through its search path, and
agentrl's instantiate allow-list admits the module through ``AGENTRL_EXTRA_TARGETS``::

    PYTHONPATH=examples/my_env AGENTRL_EXTRA_TARGETS=guess_number. \\
        python launch.py 'hydra.searchpath=[file://examples/my_env/conf]' env=my_env debug=smoke

It follows agentrl's Env contract (agentrl/envs/base.py): a suite with seeded train/val/test
tasks, ``make()`` for episode envs, an oracle (binary search) and a verifier; a malformed action
is an observation with ``info["invalid"] = True``, never an exception.
"""

from __future__ import annotations

import random
import re
from typing import Any

from agentrl.types import Task

_GUESS = re.compile(r"\s*<guess>\s*(-?\d{1,6})\s*</guess>\s*")
ERR_FORMAT = "error: expected <guess>N</guess>"


class GuessEnv:
    """One episode: ``<guess>N</guess>`` gets "higher", "lower" or "correct" (reward 1, done)."""

    def __init__(self, system_prompt: str, max_turns: int):
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.task: Task | None = None
        self.turns: list[tuple[str, str]] = []
        self.done = self.found = False

    def reset(self, task: Task) -> str:
        self.task, self.turns, self.done, self.found = task, [], False, False
        return task.prompt

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        m = _GUESS.fullmatch(action)
        if self.done or m is None:
            obs = "error: episode is over" if self.done else ERR_FORMAT
            self.turns.append((action, obs))
            return obs, 0.0, self.done, {"invalid": True, "truncated": False}
        guess, secret = int(m.group(1)), self.task.answer
        self.found = guess == secret
        obs = "correct" if self.found else ("higher" if guess < secret else "lower")
        self.done = self.found or len(self.turns) + 1 >= self.max_turns
        truncated = self.done and not self.found
        self.turns.append((action, obs))
        return (
            ("" if self.done else obs),
            float(self.found),
            self.done,
            {
                "invalid": False,
                "truncated": truncated,
            },
        )

    def render(self) -> str:
        lines = [f"user: {self.task.prompt}"] if self.task else []
        lines += [f"agent: {a}\nenv: {o}" for a, o in self.turns]
        return "\n".join(lines)


class GuessNumber:
    """The suite. Args: seed, split sizes, the range 1..high, turns per episode."""

    name = "guess_number"
    stop_strings = ["</guess>"]

    def __init__(
        self,
        seed: int = 0,
        num_train: int = 1000,
        num_val: int = 100,
        num_test: int = 100,
        high: int = 32,
        max_turns: int = 6,
        max_action_tokens: int = 12,
        system_prompt: str = "Guess with <guess>N</guess>.",
    ):
        if high < 2 or max_turns < 1:
            raise ValueError(f"need high >= 2 and max_turns >= 1, got {high}, {max_turns}")
        self.high, self.max_turns, self.max_action_tokens = high, max_turns, max_action_tokens
        self.system_prompt = system_prompt
        rng = random.Random(seed)
        self._splits = {
            split: [
                Task(f"guess/{split}/{i}", f"Guess my number in 1..{high}.", rng.randint(1, high))
                for i in range(n)
            ]
            for split, n in (("train", num_train), ("val", num_val), ("test", num_test))
        }

    def tasks(self, split: str) -> list[Task]:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}")
        return list(self._splits[split])

    def make(self) -> GuessEnv:
        return GuessEnv(self.system_prompt, self.max_turns)

    def oracle(self, task: Task, rng: random.Random) -> list[str]:
        """Binary search: the guesses, in order, until the secret."""
        lo, hi, out = 1, self.high, []
        while lo <= hi:
            mid = (lo + hi) // 2
            out.append(f"<guess>{mid}</guess>")
            if mid == task.answer:
                break
            lo, hi = (mid + 1, hi) if mid < task.answer else (lo, mid - 1)
        return out

    def verify(self, task: Task, env: GuessEnv) -> bool:
        return bool(env.found)
