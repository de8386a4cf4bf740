"""The env's own per-step rewards, summed over the episode, plus optional shaping."""

from __future__ import annotations

from agentrl.protocols import Reward
from agentrl.rewards.base import RewardOutput
from agentrl.types import Task, Trajectory


class EnvReturn(Reward):
    """total = weight * sum of the env's step rewards - step_penalty * turns
    - invalid_penalty * invalid actions.

    For envs whose step rewards carry graded outcomes (codegen: fraction of tests passed plus a
    bonus when all pass, as score changes that sum to the last submission's score). Success, the
    metric, is still the env's verifier.
    """

    name = "env_return"

    def __init__(
        self, weight: float = 1.0, step_penalty: float = 0.0, invalid_penalty: float = 0.0
    ):
        self.weight = weight
        self.step_penalty = step_penalty
        self.invalid_penalty = invalid_penalty

    def __call__(self, task: Task, trajectory: Trajectory) -> RewardOutput:
        if trajectory.success is None:
            raise ValueError(f"trajectory of {task.id} was not verified")
        invalid = sum(1 for t in trajectory.turns if t.info.get("invalid"))
        parts = {
            "env_return": self.weight * sum(float(t.reward) for t in trajectory.turns),
            "step_penalty": -self.step_penalty * len(trajectory.turns),
            "invalid_penalty": -self.invalid_penalty * invalid,
        }
        return RewardOutput(total=sum(parts.values()), components=parts)
