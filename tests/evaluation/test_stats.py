"""The statistics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from agentrl.evaluation.stats import (
    bootstrap_mean_interval,
    episode_summary,
    paired_bootstrap,
    pass_at_k,
    wilson_interval,
    z_value,
)
from agentrl.types import Task, Trajectory, Turn


def test_wilson_interval_of_8_out_of_10():
    # z = 1.959964, n = 10, p = 0.8, z²/n = 0.384146
    # center = (0.8 + 0.384146/2) / 1.384146 = 0.992073 / 1.384146 = 0.716740
    # half = z * sqrt(0.8*0.2/10 + z²/(4*100)) / 1.384146
    #      = 1.959964 * sqrt(0.016 + 0.0096037) / 1.384146 = 1.959964 * 0.160012 / 1.384146
    #      = 0.226578
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.716740 - 0.226578, abs=1e-5)  # 0.490162
    assert high == pytest.approx(0.716740 + 0.226578, abs=1e-5)  # 0.943318
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)


def test_wilson_interval_edges():
    low, high = wilson_interval(0, 10)
    # p = 0: center = half = (z²/2n) / (1 + z²/n) = 0.192073/1.384146 = 0.138767; high = 0.277533
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(0.277533, abs=1e-5)
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_pass_at_k_n5_c2():
    # k=1: 1 - C(3,1)/C(5,1) = 1 - 3/5 = 0.4 (= c/n)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    # k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # k=4 > n-c = 3: every draw of 4 holds a success
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)


def test_bootstrap_is_deterministic_for_a_seed():
    values = [0.0, 1.0, 1.0, 0.5, 0.25, 1.0, 0.0, 0.75]
    a = bootstrap_mean_interval(values, samples=500, seed=3)
    assert a == bootstrap_mean_interval(values, samples=500, seed=3)
    assert a != bootstrap_mean_interval(values, samples=500, seed=4)
    assert a[0] < sum(values) / len(values) < a[1]
    # a constant has a zero-width interval
    assert bootstrap_mean_interval([0.5] * 6) == (0.5, 0.5)


def test_paired_bootstrap_statements():
    a = {f"t{i}": 0.0 for i in range(20)}
    b = {f"t{i}": 1.0 if i < 10 else 0.0 for i in range(20)}
    better = paired_bootstrap(a, b, ("A", "B"), samples=1000, seed=0)
    # every resample of 20 tasks is a mean of 0/100-point differences; the mean here is 50
    assert better.diff_points == pytest.approx(50.0)
    assert better.significant
    assert better.statement().startswith("B is better than A by 50.0 points, 95% CI [")
    worse = paired_bootstrap(b, a, ("B", "A"), samples=1000, seed=0)
    assert worse.statement().startswith("A is worse than B by 50.0 points")
    same = paired_bootstrap(a, dict(a), ("A", "B"), samples=1000, seed=0)
    assert not same.significant
    assert same.statement() == (
        "no significant difference between B and A: B - A = +0.0 points, 95% CI [0.0, 0.0]"
    )
    assert paired_bootstrap(a, b, seed=1).to_dict() == paired_bootstrap(a, b, seed=1).to_dict()
    with pytest.raises(ValueError, match="same tasks"):
        paired_bootstrap(a, {"other": 1.0})


def traj(task: str, success: bool, turns: list[dict], generated: int, status="ok") -> Trajectory:
    t = Trajectory(
        task=Task(task, "p"),
        token_ids=[0] * (2 + generated),
        loss_mask=[0, 0] + [1] * generated,
        logprobs=[0.0] * (2 + generated),
        prompt_len=2,
        turns=[Turn("a", "o", 0.0, (0, 0), info) for info in turns],
        reward=float(success),
        success=success,
        status=status,
    )
    return t


def test_episode_summary_by_hand():
    ok = {"tool": "calc", "invalid": False, "error": None}
    bad = {"tool": None, "invalid": True, "error": "error: expected ..."}
    tool_failed = {"tool": "http", "invalid": False, "error": "timeout"}
    trajs = [
        # task a: 2 samples, 1 success; task b: 2 samples, 0 successes
        traj("a", True, [ok, ok], 10),
        traj("a", False, [bad, tool_failed, ok], 20, status="truncated"),
        traj("b", False, [ok], 6),
        traj("b", False, [bad], 4),
    ]
    s = episode_summary(trajs, pass_k=[1, 2, 4], samples=200, seed=0)
    assert (s["tasks"], s["episodes"]) == (2, 4)
    assert s["success_rate"] == 0.25
    assert (s["success_ci_low"], s["success_ci_high"]) == pytest.approx(wilson_interval(1, 4))
    # pass@1 = mean(1/2, 0) = 0.25; pass@2 = mean(1 - C(1,2)/C(2,2), 0) = mean(1, 0) = 0.5
    assert s["pass@1"] == pytest.approx(0.25)
    assert s["pass@2"] == pytest.approx(0.5)
    assert "pass@4" not in s  # 4 > 2 samples per task
    assert s["turns_mean"] == pytest.approx((2 + 3 + 1 + 1) / 4)
    assert s["generated_tokens_mean"] == pytest.approx((10 + 20 + 6 + 4) / 4)
    # 7 turns: 2 flagged invalid, 1 well-formed with a tool error
    assert s["invalid_action_rate"] == pytest.approx(2 / 7)
    assert s["tool_error_rate"] == pytest.approx(1 / 7)
    assert s["truncated_rate"] == 0.25 and s["failed_rate"] == 0.0
    assert s["reward_mean"] == 0.25
