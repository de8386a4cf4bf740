"""`python launch.py rollout=vllm` end to end: 2 RL steps of the tiny model on the CPU."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from agentrl.rewards.base import RewardOutput
from tests.conftest import ROOT


class FirstTokenParity:
    """A test reward: 1 when the episode's first generated token id is even. An untrained model
    never solves toolcalc (every reward 0, no update); this one varies with the sampled tokens,
    so every RL step updates the policy and the next rollout needs the pushed weights."""

    def __call__(self, task, traj) -> RewardOutput:
        first = traj.token_ids[traj.prompt_len]
        return RewardOutput(float(first % 2 == 0), {"parity": float(first % 2 == 0)})


# the reward group's settings replaced by FirstTokenParity
PARITY_REWARD = [
    "reward._target_=tests.vllm.test_e2e.FirstTokenParity",
    "~reward.success_weight",
    "~reward.format_bonus",
    "~reward.step_penalty",
    "~reward.invalid_penalty",
]


@pytest.mark.slow
def test_launch_rollout_vllm_trains_two_steps(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "launch.py",
        "rollout=vllm",
        "debug=smoke",
        "warmstart.enabled=false",
        "validate_before_training=false",
        "callbacks.export=null",
        *PARITY_REWARD,
        "optimizer.lr=1e-3",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    env = dict(os.environ, AGENTRL_EXTRA_TARGETS="tests.", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]
    steps = [r for r in rows if "perf/rollout_s" in r]
    assert len(steps) == 2
    for r in steps:
        # an update happened, and the next rollout ran on the pushed weights
        assert r["loss/grad_norm"] > 0
        assert r["rollout/logprob_diff"] < 1e-4
        assert "perf/sync_s" in r
    assert not list((tmp_path / "cache" / "vllm").iterdir()), "the engine's folder is removed"
