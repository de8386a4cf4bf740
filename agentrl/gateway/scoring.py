"""Rewards of gateway rollouts.

``ReportedReward`` (``reward=reported``) is the score phase's reward for ``env=external``: the
reward the agent program reported (or ``env.reward_fn`` computed), which the runner put on the
last turn of each of the rollout's trajectories. ``AnswerTag`` is a ``reward_fn``: it scores the
recorded conversation of a rollout that reported nothing, by the answer in its last response.
"""

from __future__ import annotations

import re

from agentrl.gateway.record import RolloutRecord
from agentrl.protocols import Reward
from agentrl.rewards.base import RewardOutput
from agentrl.types import Task, Trajectory


class ReportedReward(Reward):
    """total = the rollout's reported reward; components: ``reported`` and ``success``."""

    name = "reported"

    def __call__(self, task: Task, trajectory: Trajectory) -> RewardOutput:
        if not trajectory.turns:
            raise ValueError(f"trajectory of {task.id} has no calls to carry a reward")
        total = float(trajectory.turns[-1].reward)
        return RewardOutput(total, {"reported": total, "success": float(bool(trajectory.success))})


class AnswerTag:
    """1.0 when the last response holds ``<tag>X</tag>`` with X equal to the task's answer (as
    text, stripped), else 0.0."""

    def __init__(self, tag: str = "answer"):
        self.pattern = re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL)

    def __call__(self, task: Task, record: RolloutRecord) -> float:
        if not record.calls:
            return 0.0
        m = self.pattern.search(record.calls[-1].text)
        return float(m is not None and m.group(1).strip() == str(task.answer).strip())
