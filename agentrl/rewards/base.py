"""The Reward contract: ``reward(task, trajectory) -> RewardOutput`` (a float plus named parts).

``score_batch`` is what the training loop calls: it never raises. A reward that raises, or
returns NaN or an infinity, marks that episode failed; the caller counts and skips it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from agentrl.types import Trajectory

log = logging.getLogger(__name__)


@dataclass
class RewardOutput:
    total: float
    components: dict[str, float] = field(default_factory=dict)


def score_batch(reward_fn, trajectories: list[Trajectory]) -> dict[str, int]:
    """Fill reward and reward_components of each trajectory in place. Returns failure counts."""
    counts = {"reward_errors": 0, "reward_nonfinite": 0}
    for traj in trajectories:
        if traj.status == "failed":
            continue
        try:
            out = reward_fn(traj.task, traj)
        except Exception as exc:
            counts["reward_errors"] += 1
            traj.status, traj.error = "failed", f"reward: {type(exc).__name__}: {exc}"
            log.warning("reward failed on %s: %r", traj.task.id, exc)
            continue
        if not math.isfinite(out.total):
            counts["reward_nonfinite"] += 1
            traj.status, traj.error = "failed", f"reward: non-finite value {out.total}"
            continue
        traj.reward = float(out.total)
        traj.reward_components = dict(out.components)
    return counts
