"""End-to-end runs (2 RL steps) of the tooluse and reasoning_gym experiments, and of the README's
"your own env" example exactly as a user types it (slow tier)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.train import run
from tests.envs.leaks import no_leaks

ROOT = Path(__file__).resolve().parents[2]


def metric_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_tooluse_experiment_runs_and_releases_the_service(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=tooluse_grpo",
        "debug=smoke",
        "env.num_train=50",
        "env.num_val=8",
        "env.num_test=8",
        "env.max_turns=3",
        "env.max_action_tokens=40",
        "env.error_rate=0.5",
        "algorithm.group_size=2",
    )
    with no_leaks():
        run(cfg)
    rows = metric_rows(tmp_path / "run")
    train = [r for r in rows if "env/tool_errors_http" in r]
    assert len(train) == 2 and all("env/service_restarts_total" in r for r in train)
    assert any("val/success_rate" in r for r in rows)


@pytest.mark.slow
def test_reasoning_gym_experiment_runs(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=reasoning_gym_grpo",
        "debug=smoke",
        "env.dataset=chain_sum",
        "~env.config",
        "env.num_train=50",
        "env.num_val=8",
        "env.num_test=8",
        "algorithm.group_size=2",
    )
    run(cfg)
    rows = metric_rows(tmp_path / "run")
    assert len([r for r in rows if "env/success_rate" in r]) == 2
    assert any("val/success_rate" in r for r in rows)


# the README's command, word for word, plus where to write
README_COMMAND = [
    "launch.py",
    "hydra.searchpath=[file://examples/my_env/conf]",
    "env=my_env",
    "debug=smoke",
]


@pytest.mark.slow
def test_own_env_outside_the_package_as_the_readme_shows(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(["examples/my_env", str(ROOT)])
    env["AGENTRL_EXTRA_TARGETS"] = "guess_number."
    env["AGENTRL_CACHE"] = str(tmp_path / "cache")
    extra = [f"hydra.run.dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false"]
    proc = subprocess.run(
        [sys.executable, *README_COMMAND, *extra, "callbacks.rich_progress=null"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metric_rows(tmp_path / "run")
    assert len([r for r in rows if "env/success_rate" in r]) == 2
    # without the allow-list entry the same command stops with one line, exit code 2
    env.pop("AGENTRL_EXTRA_TARGETS")
    proc = subprocess.run(
        [sys.executable, *README_COMMAND, f"hydra.run.dir={tmp_path / 'denied'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "env._target_='guess_number.GuessNumber' is not an allowed target" in proc.stderr
