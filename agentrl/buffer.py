"""A bounded buffer of trajectories between the rollout and the update phases."""

from __future__ import annotations

import dataclasses
from collections import deque

from agentrl.types import Task, Trajectory, Turn


class ReplayBuffer:
    """capacity: most trajectories held (oldest dropped first).

    On-policy algorithms ``drain`` it every step; ``stats`` reports size, the mean age (in RL
    steps) of what was drained and how often each trajectory was used. It is saved in checkpoints.
    """

    def __init__(self, capacity: int = 4096):
        if capacity < 1:
            raise ValueError(f"buffer.capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.items: deque[tuple[int, Trajectory]] = deque(maxlen=capacity)
        self.dropped = 0
        self._last = {"age": 0.0, "drained": 0}

    def add(self, trajectories: list[Trajectory], step: int) -> None:
        overflow = max(0, len(self.items) + len(trajectories) - self.capacity)
        self.dropped += overflow
        self.items.extend((step, t) for t in trajectories)

    def drain(self, step: int) -> list[Trajectory]:
        items = list(self.items)
        self.items.clear()
        ages = [step - s for s, _ in items]
        self._last = {"age": sum(ages) / max(len(ages), 1), "drained": len(items)}
        return [t for _, t in items]

    def stats(self) -> dict[str, float]:
        return {
            "buffer/size": float(len(self.items)),
            "buffer/sample_age": float(self._last["age"]),
            "buffer/drained": float(self._last["drained"]),
            "buffer/dropped": float(self.dropped),
        }

    def state_dict(self) -> dict:
        return {
            "items": [(s, dataclasses.asdict(t)) for s, t in self.items],
            "dropped": self.dropped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.items.clear()
        for s, d in state["items"]:
            d = dict(d)
            d["task"] = Task(**d["task"])
            d["turns"] = [Turn(**{**t, "span": tuple(t["span"])}) for t in d["turns"]]
            self.items.append((s, Trajectory(**d)))
        self.dropped = state["dropped"]
