"""Faults during training: a crashing reward and a non-finite loss never stop the run; a run
killed with SIGKILL at any moment resumes exactly; a corrupt checkpoint is reported and an
earlier one used; checkpoints are written then renamed."""

from __future__ import annotations

import csv
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from agentrl.algorithms.grpo import GRPO
from agentrl.callbacks import commit_checkpoint
from agentrl.rewards.base import RewardOutput
from agentrl.train import checkpoint_rl_step, resolve_checkpoint, run
from tests.conftest import RESUME_RUN

ROOT = Path(__file__).resolve().parents[1]


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


# ----------------------------------------------------------------------------- kill -9, corrupt
class SlowSteps(L.Callback):
    """Sleeps after each RL step (timing only): leaves time to kill or requeue a run mid-way."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


def metrics_series(run_dir, key):
    with open(run_dir / "metrics.csv") as f:
        return [(float(r["train/rl_step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.slow
def test_kill_9_at_a_random_point_then_restart_matches_uninterrupted(resume_reference, tmp_path):
    run_dir = tmp_path / "killed"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AGENTRL_EXTRA_TARGETS": "tests.",
        "AGENTRL_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "launch.py", f"hydra.run.dir={run_dir}", *RESUME_RUN]
    slow = ["+callbacks.slow._target_=tests.test_faults.SlowSteps", "+callbacks.slow.seconds=1"]
    last = run_dir / "checkpoints" / "last.ckpt"
    # the kill point, drawn from a seed that is printed: AGENTRL_KILL_SEED=<seed> replays it
    seed = int(os.environ.get("AGENTRL_KILL_SEED") or random.SystemRandom().randrange(2**32))
    delay = random.Random(seed).uniform(0.0, 3.0)
    replay = f"kill {delay:.2f} s after the first checkpoint; replay: AGENTRL_KILL_SEED={seed}"
    print(replay)
    proc = subprocess.Popen(
        cmd + slow, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(delay)  # anywhere: in a rollout, an update, a validation, a checkpoint write
        assert proc.poll() is None, f"the run ended before the kill ({replay})"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # written then renamed: whatever the moment of the kill, last.ckpt is whole
    assert checkpoint_rl_step(str(last)) >= 1, replay
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{replay}\n{done.stderr[-4000:]}"
    assert "resuming from" in (run_dir / "launch.log").read_text()
    for key in ("rollout/reward_mean", "loss/policy", "val/success_rate"):
        want = metrics_series(resume_reference, key)
        got = metrics_series(run_dir, key)
        assert [s for s, _ in got] == [s for s, _ in want], (key, replay)
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6), (key, replay)


def _fake_checkpoint(path, rl_step):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"agentrl": {"rl_step": rl_step}, "state_dict": {}}, path)


def test_corrupt_last_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog):
    cfg = OmegaConf.create({"ckpt_path": None, "paths": {"output_dir": str(tmp_path)}})
    folder = tmp_path / "checkpoints"
    _fake_checkpoint(folder / "last.ckpt.prev", 3)
    _fake_checkpoint(folder / "best.ckpt", 2)
    good = (folder / "last.ckpt.prev").read_bytes()
    (folder / "last.ckpt").write_bytes(good[: len(good) // 2])  # truncated mid-write
    with caplog.at_level(logging.ERROR, logger="agentrl"):
        assert resolve_checkpoint(cfg) == str(folder / "last.ckpt.prev")
    assert "last.ckpt cannot be read" in caplog.text and "trying an earlier" in caplog.text
    (folder / "last.ckpt.prev").write_bytes(b"garbage")
    assert resolve_checkpoint(cfg) == str(folder / "best.ckpt")
    # an explicit ckpt_path is never replaced behind the user's back
    cfg.ckpt_path = str(folder / "last.ckpt")
    assert resolve_checkpoint(cfg) == str(folder / "last.ckpt")


def test_commit_checkpoint_renames_and_keeps_the_previous(tmp_path):
    final = tmp_path / "last.ckpt"
    _fake_checkpoint(tmp_path / "a.tmp", 1)
    commit_checkpoint(tmp_path / "a.tmp", final, keep_previous=True)
    assert checkpoint_rl_step(str(final)) == 1 and not (tmp_path / "a.tmp").exists()
    _fake_checkpoint(tmp_path / "b.tmp", 2)
    commit_checkpoint(tmp_path / "b.tmp", final, keep_previous=True)
    assert checkpoint_rl_step(str(final)) == 2
    assert checkpoint_rl_step(str(tmp_path / "last.ckpt.prev")) == 1
    # a sharded checkpoint is a folder: the old one becomes .prev
    for step in (5, 6):
        tmp = tmp_path / f"s{step}.tmp"
        _fake_checkpoint(tmp / "meta.pt", step)
        commit_checkpoint(tmp, tmp_path / "sharded.ckpt", keep_previous=True)
    assert checkpoint_rl_step(str(tmp_path / "sharded.ckpt")) == 6
    assert checkpoint_rl_step(str(tmp_path / "sharded.ckpt.prev")) == 5
