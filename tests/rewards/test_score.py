"""Rewards never raise into the loop: errors and non-finite values mark the episode failed."""

import math

import pytest

from agentrl.rewards.base import RewardOutput, score_batch
from agentrl.rewards.heuristic import HeuristicReward
from agentrl.types import Task, Trajectory, Turn


def traj(success=True, invalid=0, turns=2):
    infos = [{"invalid": i < invalid} for i in range(turns)]
    return Trajectory(
        task=Task("t", "p", 1),
        token_ids=[1],
        loss_mask=[0],
        logprobs=[0.0],
        prompt_len=1,
        turns=[Turn("a", "o", 0.0, (0, 1), info) for info in infos],
        success=success,
    )


def test_heuristic_components_by_hand():
    reward = HeuristicReward(
        success_weight=1.0, format_bonus=0.1, step_penalty=0.05, invalid_penalty=0.2
    )
    # solved, 3 turns, one invalid: 1.0 + 0 (not clean) - 0.15 - 0.2 = 0.65
    out = reward(Task("t", "p", 1), traj(success=True, invalid=1, turns=3))
    assert math.isclose(out.total, 0.65)
    expected = {"success": 1.0, "format": 0.0, "step_penalty": -0.15, "invalid_penalty": -0.2}
    assert out.components == pytest.approx(expected)
    # failed, 2 clean turns: 0 + 0.1 - 0.1 = 0
    assert math.isclose(reward(Task("t", "p", 1), traj(success=False)).total, 0.0)


def test_errors_and_nonfinite_rewards_are_counted_not_raised():
    def flaky(task, t):
        if t.task.id == "boom":
            raise ConnectionError("scorer down")
        return RewardOutput(float("nan") if t.task.id == "nan" else 1.0)

    a, b, c = traj(), traj(), traj()
    b.task, c.task = Task("boom", "p", 1), Task("nan", "p", 1)
    counts = score_batch(flaky, [a, b, c])
    assert counts == {"reward_errors": 1, "reward_nonfinite": 1}
    assert a.reward == 1.0 and a.status == "ok"
    assert b.status == "failed" and "scorer down" in b.error
    assert c.status == "failed" and "non-finite" in c.error
