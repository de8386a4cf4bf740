"""Faults during training: a crashing reward and a non-finite loss never stop the run."""

from __future__ import annotations

import csv

import pytest
import torch

from agentrl.algorithms.grpo import GRPO
from agentrl.rewards.base import RewardOutput
from agentrl.train import run


class SometimesCrashingReward:
    """Raises on every third call; otherwise 1 for success."""

    def __init__(self):
        self.calls = 0

    def __call__(self, task, trajectory):
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("reward service exploded")
        return RewardOutput(float(bool(trajectory.success)) + 0.01 * self.calls)


class NaNLossGRPO(GRPO):
    """GRPO whose loss is NaN: every update must be skipped, never applied."""

    def loss(self, *args, **kwargs):
        loss, stats = super().loss(*args, **kwargs)
        return loss * float("nan"), stats


def last_row_with(run_dir, key):
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    return float(rows[-1][key])


@pytest.mark.slow
def test_crashing_reward_marks_episodes_failed_and_training_continues(
    make_cfg, tmp_path, monkeypatch
):
    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    cfg = make_cfg(
        "debug=smoke",
        "reward._target_=tests.test_faults.SometimesCrashingReward",
        "~reward.success_weight",
        "~reward.format_bonus",
        "~reward.step_penalty",
        "~reward.invalid_penalty",
    )
    run(cfg)
    assert last_row_with(tmp_path / "run", "rollout/failed_episodes_total") > 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_nonfinite_loss_is_skipped_and_counted(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    # a reward that varies (so advantages are not all zero and the loss is really computed)
    cfg = make_cfg(
        "debug=smoke",
        "algorithm._target_=tests.test_faults.NaNLossGRPO",
        "warmstart.enabled=false",
        "reward._target_=tests.test_faults.SometimesCrashingReward",
        "~reward.success_weight",
        "~reward.format_bonus",
        "~reward.step_penalty",
        "~reward.invalid_penalty",
    )
    run(cfg)
    run_dir = tmp_path / "run"
    assert last_row_with(run_dir, "loss/skipped_updates_total") >= 1
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
