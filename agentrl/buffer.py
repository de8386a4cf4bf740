"""A bounded buffer of trajectories between the rollout and the update phases.

Not in the training loop for now (every algorithm here is on-policy: the step passed each step's
episodes through it and drained them at once); off-policy reuse will bring it back (README).
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque

from agentrl.types import Task, Trajectory, Turn


class ReplayBuffer:
    """capacity: most trajectories held (oldest dropped first, counted in ``dropped``).

    On-policy algorithms ``drain`` it every step; off-policy reuse draws with ``sample`` (the
    trajectories stay). Each held trajectory counts the updates it was used in. ``stats`` reports
    the size, and for the last draw (drain or sample) the mean age in RL steps, how many were
    drawn and ``buffer/reuse_mean``: how many updates the drawn trajectories were used in so far,
    on average, this one included (a drained trajectory used once counts 1). ``state_dict`` and
    ``load_state_dict`` round-trip it.
    """

    def __init__(self, capacity: int = 4096):
        if capacity < 1:
            raise ValueError(f"buffer.capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        # [step added, trajectory, updates used in]
        self.items: deque[list] = deque(maxlen=capacity)
        self.dropped = 0
        self._last = {"age": 0.0, "drained": 0, "reuse": 0.0}

    def add(self, trajectories: list[Trajectory], step: int) -> None:
        overflow = max(0, len(self.items) + len(trajectories) - self.capacity)
        self.dropped += overflow
        self.items.extend([step, t, 0] for t in trajectories)

    def _draw(self, items: list[list], step: int) -> list[Trajectory]:
        for item in items:
            item[2] += 1
        n = max(len(items), 1)
        self._last = {
            "age": sum(step - s for s, _, _ in items) / n,
            "drained": len(items),
            "reuse": sum(u for _, _, u in items) / n,
        }
        return [t for _, t, _ in items]

    def drain(self, step: int) -> list[Trajectory]:
        """Every held trajectory, oldest first; the buffer is left empty."""
        items = list(self.items)
        self.items.clear()
        return self._draw(items, step)

    def sample(self, n: int, step: int, rng: random.Random | None = None) -> list[Trajectory]:
        """``n`` distinct held trajectories (all when fewer), chosen at random; they stay held."""
        rng = rng or random.Random(step)
        items = list(self.items)
        return self._draw(rng.sample(items, min(n, len(items))), step)

    def stats(self) -> dict[str, float]:
        return {
            "buffer/size": float(len(self.items)),
            "buffer/sample_age": float(self._last["age"]),
            "buffer/drained": float(self._last["drained"]),
            "buffer/dropped": float(self.dropped),
            "buffer/reuse_mean": float(self._last["reuse"]),
        }

    def state_dict(self) -> dict:
        return {
            "items": [(s, dataclasses.asdict(t), u) for s, t, u in self.items],
            "dropped": self.dropped,
            "last": dict(self._last),
        }

    def load_state_dict(self, state: dict) -> None:
        self.items.clear()
        for item in state["items"]:
            s, d = item[0], dict(item[1])
            uses = item[2] if len(item) > 2 else 0  # checkpoints before the reuse counter
            d["task"] = Task(**d["task"])
            d["turns"] = [Turn(**{**t, "span": tuple(t["span"])}) for t in d["turns"]]
            self.items.append([s, Trajectory(**d), uses])
        self.dropped = state["dropped"]
        self._last = {"age": 0.0, "drained": 0, "reuse": 0.0, **state.get("last", {})}
