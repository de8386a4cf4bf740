"""Metrics that do not mislead (issue 21; the real tiny runs are in the slow tier): each
validation's samples are written under its own RL step, the last one included; a reward that
fails is left out of the reward means and counted (``rollout/reward_failures``,
``val/reward_failures``), never turned into ``nan`` or 0.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import pytest

from agentrl.rewards.base import RewardOutput, as_reward, score_batch
from agentrl.rollout.runner import EpisodeRunner
from agentrl.step_metrics import train_metrics
from agentrl.train import run
from tests.test_callbacks import traj
from tests.test_train import metrics_rows, rows_with

# 2 RL steps of 2 tasks x 2 episodes, a validation of 4 tasks before training and after each step,
# no warm start
SHORT = [
    "num_threads=1",
    "debug=smoke",
    "warmstart.enabled=false",
    "callbacks.export=null",
    "data.steps=2",
    "trainer.val_check_interval=1",
    "algorithm.group_size=2",
]
# the reward below replaces the heuristic one: its options go
OWN_REWARD = [f"~reward.{k}" for k in ("success_weight", "format_bonus", "step_penalty")] + [
    "~reward.invalid_penalty"
]


class CountingReward:
    """The number of episodes scored so far: each validation's rewards differ from the last's."""

    def __init__(self):
        self.calls = 0

    def __call__(self, task, trajectory):
        self.calls += 1
        return RewardOutput(float(self.calls))


class UnreachableReward:
    """Every call fails, as a reward API that cannot be reached."""

    def __call__(self, task, trajectory):
        raise ConnectionError("reward service unreachable")


class EveryOtherFails:
    """Fails on every second episode; 2.0 otherwise (a failure counted as 0 would halve a mean)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, task, trajectory):
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("reward service exploded")
        return RewardOutput(2.0)


def reward_cfg(make_cfg, monkeypatch, name: str):
    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    return make_cfg(*SHORT, f"reward._target_=tests.test_honest_metrics.{name}", *OWN_REWARD)


def series(rows, key) -> list[tuple[float, float]]:
    return [(r["train/rl_step"], r[key]) for r in rows_with(rows, key)]


def test_a_step_whose_rewards_all_failed_has_no_mean_and_counts_them():
    trajs = [traj(i) for i in range(4)]
    counts = score_batch(UnreachableReward(), trajs)
    host = SimpleNamespace(
        counters=Counter(failed_episodes=0, skipped_updates=0),
        rl_step=1,
        suite=None,
        reward=as_reward(UnreachableReward()),
        runner=EpisodeRunner(None, None, None, 512),
    )
    m = train_metrics(host, trajs, counts, {})
    assert not [k for k, v in m.items() if math.isnan(v)]
    assert "rollout/reward_mean" not in m and "env/success_rate" not in m
    assert m["rollout/reward_failures"] == m["rollout/failed_episodes"] == 4.0


@pytest.mark.slow
def test_each_validation_writes_its_own_samples_under_its_step(make_cfg, tmp_path, monkeypatch):
    run(reward_cfg(make_cfg, monkeypatch, "CountingReward"))
    run_dir = tmp_path / "run"
    lines = (run_dir / "samples" / "val.jsonl").read_text().splitlines()
    logged = [json.loads(x) for x in lines]
    # the validation before training and after each step, the last one included, each with all
    # of its 4 episodes
    assert [r["rl_step"] for r in logged] == [0] * 4 + [1] * 4 + [2] * 4
    # the episodes of a step are that validation's: their mean reward is the one it logged
    val = dict(series(metrics_rows(run_dir), "val/reward_mean"))
    assert sorted(val) == [0.0, 1.0, 2.0]
    for step in (0, 1, 2):
        rewards = [r["reward"] for r in logged if r["rl_step"] == step]
        assert sum(rewards) / len(rewards) == pytest.approx(val[float(step)]), step


@pytest.mark.slow
def test_rewards_that_all_fail_are_counted_not_nan(make_cfg, tmp_path, monkeypatch):
    run(reward_cfg(make_cfg, monkeypatch, "UnreachableReward"))
    rows = metrics_rows(tmp_path / "run")
    # no mean over no episode: the key is absent (a nan would poison every average of the run)
    spaces = ("rollout", "env", "reward", "val")
    assert {
        k for r in rows for k, v in r.items() if k.split("/")[0] in spaces and math.isnan(v)
    } == set()
    assert not rows_with(rows, "rollout/reward_mean")
    assert not rows_with(rows, "val/reward_mean")
    # every episode of each step (2 tasks x 2) and of each validation (4 tasks) is counted
    assert series(rows, "rollout/reward_failures") == [(1.0, 4.0), (2.0, 4.0)]
    assert series(rows, "rollout/failed_episodes") == [(1.0, 4.0), (2.0, 4.0)]
    assert series(rows, "val/reward_failures") == [(0.0, 4.0), (1.0, 4.0), (2.0, 4.0)]
    assert series(rows, "val/failed_episodes") == [(0.0, 4.0), (1.0, 4.0), (2.0, 4.0)]
    assert series(rows, "val/success_rate")  # still logged: best.ckpt goes on by it


@pytest.mark.slow
def test_failed_rewards_are_left_out_of_the_means(make_cfg, tmp_path, monkeypatch):
    run(reward_cfg(make_cfg, monkeypatch, "EveryOtherFails"))
    rows = metrics_rows(tmp_path / "run")
    # the episodes whose reward came back all have 2.0: a failure counted as 0 would show
    assert series(rows, "rollout/reward_mean") == [(1.0, 2.0), (2.0, 2.0)]
    assert series(rows, "val/reward_mean") == [(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)]
    assert series(rows, "rollout/reward_failures") == [(1.0, 2.0), (2.0, 2.0)]
    assert series(rows, "val/reward_failures") == [(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)]
