"""A bounded buffer of trajectories between the rollout and the update phases.

``rollout.pipeline=sync`` does not use it (each step's episodes go straight to the update);
``rollout.pipeline=overlap`` (``agentrl/pipeline.py``) holds what its rollout thread produces
here, each trajectory with the policy version that generated it, and ``take``s each step's
update from it (stale samples dropped and counted, reuse bounded).
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
        # [step added, trajectory, updates used in, policy version that generated it]
        self.items: deque[list] = deque(maxlen=capacity)
        self.dropped = 0
        # samples ``take`` dropped for being older than its max_staleness
        self.stale_dropped = 0
        self._last = {"age": 0.0, "drained": 0, "reuse": 0.0}

    def add(self, trajectories: list[Trajectory], step: int, version: int | None = None) -> None:
        """``version``: the policy version (RL steps of updates) that generated them; the step
        added when not given."""
        overflow = max(0, len(self.items) + len(trajectories) - self.capacity)
        self.dropped += overflow
        v = step if version is None else version
        self.items.extend([step, t, 0, v] for t in trajectories)

    def _draw(self, items: list[list], step: int) -> list[Trajectory]:
        for item in items:
            item[2] += 1
        n = max(len(items), 1)
        self._last = {
            "age": sum(step - it[0] for it in items) / n,
            "drained": len(items),
            "reuse": sum(it[2] for it in items) / n,
        }
        return [it[1] for it in items]

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

    def take(
        self, step: int, max_staleness: int, max_reuse: int
    ) -> list[tuple[Trajectory, int, int]]:
        """The update of ``step``: every held trajectory at most ``max_staleness`` policy versions
        old (older ones are dropped, counted in ``stale_dropped``), oldest first, as (trajectory,
        step added, version); a trajectory used ``max_reuse`` times leaves the buffer."""
        fresh = []
        for item in self.items:
            if step - item[3] > max_staleness:
                self.stale_dropped += 1
            else:
                fresh.append(item)
        self._draw(fresh, step)
        self.items.clear()
        self.items.extend(it for it in fresh if it[2] < max_reuse)
        return [(it[1], it[0], it[3]) for it in fresh]

    def stats(self) -> dict[str, float]:
        return {
            "buffer/size": float(len(self.items)),
            "buffer/sample_age": float(self._last["age"]),
            "buffer/drained": float(self._last["drained"]),
            "buffer/dropped": float(self.dropped),
            "buffer/reuse_mean": float(self._last["reuse"]),
            "buffer/stale_dropped": float(self.stale_dropped),
        }

    def state_dict(self) -> dict:
        return {
            "items": [(s, traj_state(t), u, v) for s, t, u, v in self.items],
            "dropped": self.dropped,
            "stale_dropped": self.stale_dropped,
            "last": dict(self._last),
        }

    def load_state_dict(self, state: dict) -> None:
        self.items.clear()
        for item in state["items"]:
            s = item[0]
            uses = item[2] if len(item) > 2 else 0  # checkpoints before the reuse counter
            version = item[3] if len(item) > 3 else s  # checkpoints before policy versions
            self.items.append([s, traj_from_state(item[1]), uses, version])
        self.dropped = state["dropped"]
        self.stale_dropped = state.get("stale_dropped", 0)
        self._last = {"age": 0.0, "drained": 0, "reuse": 0.0, **state.get("last", {})}


def traj_state(t: Trajectory) -> dict:
    """A trajectory as plain data (a checkpoint entry)."""
    return dataclasses.asdict(t)


def traj_from_state(state: dict) -> Trajectory:
    """What ``traj_state`` returned, as a Trajectory again."""
    d = dict(state)
    d["task"] = Task(**d["task"])
    d["turns"] = [Turn(**{**t, "span": tuple(t["span"])}) for t in d["turns"]]
    return Trajectory(**d)
