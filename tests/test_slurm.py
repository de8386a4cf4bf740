"""On a real SLURM cluster (``slurm/cluster/start.sh``; CI starts one): a --multirun sweep through
submitit, a 2-task DDP job through sbatch, and a job requeued mid-run that resumes exactly.

Skipped where there is no SLURM (``sinfo`` not found, or no controller answers) unless
AGENTRL_REQUIRE_SLURM=1 (set by .ci/run), which turns a missing cluster into a failure.
"""

from __future__ import annotations

import csv
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrl.sweep import main as sweep_main
from agentrl.train import ConfigError, checkpoint_rl_step

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def _slurm_state() -> str | None:
    """None when a cluster answers, else why not."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found); slurm/cluster/start.sh starts a local cluster"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "SLURM is installed but `scontrol ping` did not answer in 20 s"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        status = (ping.stdout.strip().splitlines() or ["no answer"])[0]
        return f"SLURM is installed but no controller answers ({status})"
    return None


_WHY = _slurm_state()
if _WHY and os.environ.get("AGENTRL_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"AGENTRL_REQUIRE_SLURM=1 but {_WHY}")
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(bool(_WHY), reason=_WHY or ""),
]


QUIET = [
    "trainer.enable_progress_bar=false",
    "callbacks.rich_progress=null",
    "callbacks.export=null",
    "callbacks.step_checkpoints=null",
    "num_threads=1",
]


def job_env(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHON": sys.executable,
        "AGENTRL_CACHE": str(tmp_path / "cache"),
        "AGENTRL_EXTRA_TARGETS": "tests.",
        "OMP_NUM_THREADS": "1",
    }


def metrics_rows(run_dir) -> list[dict[str, float]]:
    with open(Path(run_dir) / "metrics.csv") as f:
        return [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]


def series(rows, key):
    return [(r["train/rl_step"], r[key]) for r in rows if key in r]


def job_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout.split()
    return out[-1].split()[0] if out else "UNKNOWN"


def queue_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20
    )
    return out.stdout.strip()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_multirun_sweep_through_submitit(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "launch.py",
        "--multirun",
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.timeout_min=10",
        "debug=smoke",
        "seed=0,1,2",
        *QUIET,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=job_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # each job's return value (val/success_rate) came back through submitit's result files
    results = sorted((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 3, results
    for path in results:
        status, value = pickle.loads(path.read_bytes())
        assert status == "success", value
        assert isinstance(value.return_value, float) and 0.0 <= value.return_value <= 1.0
    for i in range(3):
        rows = metrics_rows(sweep / str(i))
        assert series(rows, "val/success_rate"), f"job {i} logged no validation"
    assert sweep_main([str(sweep)]) == 0
    with open(sweep / "sweep.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["config"].startswith("debug=smoke") and row["seeds"] == "3"


def test_ddp_job_with_two_tasks_through_sbatch(tmp_path):
    run_dir = tmp_path / "run"
    env = {**job_env(tmp_path), "RUN_DIR": str(run_dir)}
    cmd = ["sbatch", "--wait", "--parsable", f"--output={tmp_path}/%j.out", "--time=10"]
    cmd += ["slurm/train.sbatch", "debug=smoke", *QUIET]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    job_id = proc.stdout.strip().split(";")[0]
    log = (tmp_path / f"{job_id}.out").read_text() if job_id else ""
    assert proc.returncode == 0, proc.stderr + log[-5000:]
    assert "1 node(s) x 2 task(s)" in log
    # Lightning took both srun tasks as the two ranks of one DDP job
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "distributed_backend=gloo" in log
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert series(metrics_rows(run_dir), "val/success_rate")


def test_requeued_job_resumes_and_matches_uninterrupted(resume_reference, tmp_path):
    from tests.conftest import RESUME_RUN

    # the kill -9 test's run (tests/test_faults.py): one uninterrupted reference for both
    overrides = ["trainer=default", *RESUME_RUN]
    assert set(QUIET) <= set(overrides)
    run_dir = tmp_path / "run"
    env = {**job_env(tmp_path), "RUN_DIR": str(run_dir)}
    slow = ["+callbacks.slow._target_=tests.test_faults.SlowSteps", "+callbacks.slow.seconds=2"]
    cmd = ["sbatch", "--parsable", "--ntasks-per-node=1", f"--output={tmp_path}/%j.out"]
    cmd += ["--time=10", "slurm/train.sbatch", *overrides, *slow]
    job_id = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    last = run_dir / "checkpoints" / "last.ckpt"

    def checkpointed_step():
        try:
            return last.exists() and checkpoint_rl_step(str(last)) >= 2
        except ConfigError:  # being replaced right now
            return False

    try:
        wait_for(checkpointed_step, 300, "a checkpoint at RL step 2")
        assert job_state(job_id) == "RUNNING"
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
        # SLURM holds a requeued job back for about two minutes (its begin time): start it now
        wait_for(lambda: queue_state(job_id) == "PENDING", 60, f"job {job_id} to be pending")
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=30)
        wait_for(lambda: job_state(job_id) in TERMINAL, 400, f"job {job_id} to end", 1.0)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    log = (tmp_path / f"{job_id}.out").read_text()
    assert job_state(job_id) == "COMPLETED", log[-5000:]
    assert "(restart 1)" in log and "resuming from" in log, log[-5000:]

    # the same run, uninterrupted, in this process (once a session: conftest.resume_reference)
    got, want = metrics_rows(run_dir), metrics_rows(resume_reference)
    for key in ("rollout/reward_mean", "loss/policy", "val/success_rate", "val/reward_mean"):
        assert [s for s, _ in series(got, key)] == [s for s, _ in series(want, key)], key
        values = [v for _, v in series(want, key)]
        assert [v for _, v in series(got, key)] == pytest.approx(values, abs=1e-6), key
    assert [s for s, _ in series(got, "val/success_rate")] == [0, 1, 2, 3, 4]
