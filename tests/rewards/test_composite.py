"""Composite weighting and normalisation, by hand; a user's own function as a reward."""

from __future__ import annotations

import math

import pytest

from agentrl.rewards.base import RewardOutput, score_batch
from agentrl.rewards.composite import CompositeReward, Part
from agentrl.train import build_components
from agentrl.types import Task, Trajectory, Turn
from agentrl.utils.instantiate import ConfigError
from tests.conftest import ROOT


def traj(tid="t", success=True, turns=2, meta=None):
    return Trajectory(
        task=Task(tid, "p", 1, meta or {}),
        token_ids=[1],
        loss_mask=[0],
        logprobs=[0.0],
        prompt_len=1,
        turns=[Turn("a", "o", 0.0, (0, 1), {}) for _ in range(turns)],
        success=success,
    )


def constant(values):
    """A reward returning values[task id] (a plain function, as users write them)."""

    def score(task, trajectory):
        return values[task.id]

    return score


def test_weighted_sum_by_hand():
    a = constant({"x": 1.0, "y": 0.0})
    b = constant({"x": 2.0, "y": 4.0})
    comp = CompositeReward({"a": Part(a, weight=2.0), "b": Part(b, weight=-0.5)})
    tx, ty = traj("x"), traj("y")
    counts = score_batch(comp, [tx, ty])
    assert counts["reward_errors"] == 0
    # x: 2*1 - 0.5*2 = 1.0 ; y: 2*0 - 0.5*4 = -2.0
    assert tx.reward == pytest.approx(1.0) and ty.reward == pytest.approx(-2.0)
    assert tx.reward_components["a"] == pytest.approx(2.0)
    assert tx.reward_components["b"] == pytest.approx(-1.0)
    assert tx.reward_components["b/raw"] == pytest.approx(2.0)


def test_batch_and_running_normalisation_by_hand():
    r = constant({"p": 1.0, "q": 3.0, "s": 5.0})
    batch = CompositeReward({"r": Part(r, normalize="batch", eps=0.0)})
    ts = [traj("p"), traj("q"), traj("s")]
    score_batch(batch, ts)
    # mean 3, population std sqrt(8/3)
    std = math.sqrt(8 / 3)
    assert [t.reward for t in ts] == pytest.approx([-2 / std, 0.0, 2 / std])

    running = CompositeReward({"r": Part(r, normalize="running", eps=0.0)})
    score_batch(running, [traj("p"), traj("s")])  # first batch: its own stats, mean 3, std 2
    later = [traj("q"), traj("s")]
    score_batch(running, later)  # normalised by the stats before this batch: (3-3)/2, (5-3)/2
    assert [t.reward for t in later] == pytest.approx([0.0, 1.0])
    # stats now over 1, 5, 3, 5: mean 3.5, var (6.25+2.25+0.25+2.25)/4 = 2.75
    state = running.state_dict()
    assert state["r"]["stats"]["n"] == 4 and state["r"]["stats"]["mean"] == pytest.approx(3.5)
    fresh = CompositeReward({"r": Part(r, normalize="running", eps=0.0)})
    fresh.load_state_dict(state)
    t = traj("s")
    score_batch(fresh, [t])
    assert t.reward == pytest.approx((5 - 3.5) / math.sqrt(2.75))
    assert fresh.metrics()["reward/r/running_mean"] != 3.5  # updated with the new batch


def test_nonfinite_and_failing_parts_fail_the_episode_and_are_counted():
    good = constant({"ok": 1.0, "nan": 1.0, "inf": 1.0, "boom": 1.0})

    def odd(task, trajectory):
        if task.id == "boom":
            raise RuntimeError("scorer crashed")
        return {"ok": 0.5, "nan": math.nan, "inf": math.inf}[task.id]

    comp = CompositeReward({"g": Part(good), "o": Part(odd)})
    ts = [traj(i) for i in ("ok", "nan", "inf", "boom")]
    counts = score_batch(comp, ts)
    assert counts["reward_errors"] == 3
    assert [t.status for t in ts] == ["ok", "failed", "failed", "failed"]
    assert ts[0].reward == pytest.approx(1.5)
    assert "scorer crashed" in ts[3].error

    # a plain reward returning inf, or a RewardOutput with a NaN component, is rejected too
    ts = [traj("a"), traj("b")]
    outs = {"a": math.inf, "b": RewardOutput(1.0, {"x": math.nan})}
    counts = score_batch(lambda task, t: outs[task.id], ts)
    assert counts["reward_nonfinite"] == 2 and all(t.status == "failed" for t in ts)
    # a value that is no number at all is an error, not a crash
    t = traj("c")
    assert score_batch(lambda task, tr: "high", [t])["reward_errors"] == 1


def test_composite_config_instantiates_nested_rewards(make_cfg):
    cfg = make_cfg("reward=composite", "debug=smoke")
    reward = build_components(cfg)["reward"]
    assert isinstance(reward, CompositeReward)
    t = traj(success=True, turns=2)
    score_batch(reward, [t])
    # heuristic part: success 1 + format 0.1 (no invalid action)
    assert t.reward == pytest.approx(1.1)
    assert t.reward_components["heuristic/success"] == 1.0


EXAMPLE = [f"hydra.searchpath=[file://{ROOT}/examples/conf]"]


def test_own_function_needs_the_allow_list(make_cfg, monkeypatch):
    monkeypatch.delenv("AGENTRL_EXTRA_TARGETS", raising=False)
    cfg = make_cfg(*EXAMPLE, "reward=my_reward")
    with pytest.raises(ConfigError, match="AGENTRL_EXTRA_TARGETS"):
        build_components(cfg)


def test_own_function_alone_and_in_composite(make_cfg, monkeypatch):
    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "examples.")
    alone = build_components(make_cfg(*EXAMPLE, "reward=my_reward"))["reward"]
    # solved in 4 turns where 2 suffice (num_ops 1): 1 - 0.1 * 2 = 0.8
    t = traj(turns=4, meta={"num_ops": 1})
    score_batch(alone, [t])
    assert t.reward == pytest.approx(0.8) and t.reward_components == {"brevity_bonus": 0.8}

    comp = build_components(make_cfg(*EXAMPLE, "reward=my_composite"))["reward"]
    a, b = traj(turns=4, meta={"num_ops": 1}), traj(turns=2, meta={"num_ops": 1})
    score_batch(comp, [a, b])
    # heuristic 1.1 each; brevity 0.8 and 1.0, batch z-scores -1 and +1, weight 0.5
    assert a.reward == pytest.approx(1.1 - 0.5, abs=1e-4)
    assert b.reward == pytest.approx(1.1 + 0.5, abs=1e-4)


class Stateful:
    """A part with every optional hook (as reward=learned or api have)."""

    name = "stateful"

    def __init__(self):
        self.state = {"seen": 0}

    def score_batch(self, trajectories):
        self.state["seen"] += len(trajectories)
        return [0.5] * len(trajectories)

    def metrics(self):
        return {"reward/stateful_seen": float(self.state["seen"])}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


def test_composite_forwards_metrics_and_state():
    part = Stateful()
    comp = CompositeReward({"h": Part(constant({"t": 1.0})), "s": Part(part, weight=2.0)})
    t = traj()
    score_batch(comp, [t])
    assert t.reward == pytest.approx(2.0) and comp.metrics()["reward/stateful_seen"] == 1.0
    fresh = Stateful()
    CompositeReward({"s": Part(fresh)}).load_state_dict(comp.state_dict())
    assert fresh.state == {"seen": 1}
