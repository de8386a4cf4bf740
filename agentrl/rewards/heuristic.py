"""The env's verifier plus configurable shaping, each part a named component."""

from __future__ import annotations

from agentrl.protocols import Reward
from agentrl.rewards.base import RewardOutput
from agentrl.types import Task, Trajectory


class HeuristicReward(Reward):
    """total = success_weight * success + format_bonus * (no invalid action)
    - step_penalty * turns - invalid_penalty * invalid actions.

    ``success`` is the env verifier's outcome, computed when the episode ended: the same function
    evaluation uses, so the reward and the metric cannot drift.
    """

    name = "heuristic"

    def __init__(
        self,
        success_weight: float = 1.0,
        format_bonus: float = 0.0,
        step_penalty: float = 0.0,
        invalid_penalty: float = 0.0,
    ):
        self.success_weight = success_weight
        self.format_bonus = format_bonus
        self.step_penalty = step_penalty
        self.invalid_penalty = invalid_penalty

    def __call__(self, task: Task, trajectory: Trajectory) -> RewardOutput:
        if trajectory.success is None:
            raise ValueError(f"trajectory of {task.id} was not verified")
        invalid = sum(1 for t in trajectory.turns if t.info.get("invalid"))
        parts = {
            "success": self.success_weight * float(trajectory.success),
            "format": self.format_bonus * float(invalid == 0 and trajectory.status != "truncated"),
            "step_penalty": -self.step_penalty * len(trajectory.turns),
            "invalid_penalty": -self.invalid_penalty * invalid,
        }
        return RewardOutput(total=sum(parts.values()), components=parts)
