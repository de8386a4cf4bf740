"""Stopping on SIGTERM/SIGINT (agentrl/stopping.py): the handler's flag and the exit codes here;
real ``launch.py`` runs signalled at each safe point, then resumed, in the slow tests below."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from agentrl import stopping
from agentrl.train import checkpoint_rl_step
from tests.test_console import log_messages
from tests.test_train import assert_same_steps_and_values, metrics_rows, rows_with

ROOT = Path(__file__).resolve().parents[1]


def test_signal_sets_the_flag_and_check_raises_with_the_exit_code():
    before = signal.getsignal(signal.SIGTERM)
    with stopping.handle_signals():
        stopping.check("rollout", 1)  # nothing requested: no stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopping.requested()
        with pytest.raises(stopping.StopRequested) as info:
            stopping.check("rollout", 3)
    assert (info.value.phase, info.value.step, info.value.exit_code) == ("rollout", 3, 143)
    # the handlers of before are back, and the stop ended with the run that got it
    assert signal.getsignal(signal.SIGTERM) is before
    assert not stopping.requested()
    stopping.check("warm start", 0, sync=False)


def test_second_ctrl_c_stops_at_once():
    with stopping.handle_signals():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(stopping.StopRequested) as info:
            stopping.check("validation", 0)
        assert info.value.exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_handler_reclaimed_after_lightning_installs_its_own():
    with stopping.handle_signals():
        signal.signal(signal.SIGTERM, lambda *a: None)  # as Lightning's _SignalConnector does
        stopping.reclaim()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopping.requested()


def test_rank_0_takes_the_ranks_it_started_from_lightnings_observer(monkeypatch):
    """trainer=ddp: at a stop, a rank Lightning's launcher started exits 143, and Lightning's
    child-process observer would then SIGKILL rank 0 (all its processes) before its line."""
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    def observed():
        rank1 = subprocess.Popen([sys.executable, "-c", "raise SystemExit(143)"])
        rank1.wait()
        launcher = type("Launcher", (), {"procs": [rank1], "kill": lambda self, signum: None})()
        observer = _ChildProcessObserver(main_pid=os.getpid(), child_processes=launcher.procs)
        killed = []
        observer._terminate_all = lambda: killed.append(True)  # what it would SIGKILL
        return launcher, observer, killed

    # unadopted (as before): the observer's next look kills rank 0
    launcher, observer, killed = observed()
    assert observer._run() and killed
    launcher, observer, killed = observed()
    with stopping.handle_signals():
        monkeypatch.setattr(stopping.STATE, "launcher", launcher)
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(stopping.StopRequested):
            stopping.check("validation", 2)
    assert observer._run() and not killed  # nothing left to observe: rank 0 lives
    assert [p.returncode for p in stopping.STATE.ranks] == [143]
    stopping.wait_for_ranks()
    assert stopping.STATE.ranks == []


def test_resume_command_reruns_in_the_run_dir():
    # outside @hydra.main there are no overrides to repeat: the run directory is named
    assert stopping.resume_command("/runs/a b").endswith("'hydra.run.dir=/runs/a b'")


def test_the_stop_line_is_logged_once_not_printed(caplog, capsys, tmp_path):
    # logged: Hydra's job logging writes it to the console and to the run's launch.log
    exc = stopping.StopRequested(signal.SIGTERM, "rollout", 3)
    with caplog.at_level("INFO", logger="agentrl"):
        stopping.report(exc, str(tmp_path))
    assert [r.getMessage() for r in caplog.records] == [stopping.summary(exc, str(tmp_path))]
    assert caplog.messages[0].startswith("stopped by SIGTERM in the rollout of RL step 3;")
    assert capsys.readouterr().err == ""


def _loops(train: tuple[int, int], val_total: tuple[int, int], val_current: tuple[int, int]):
    """A fit loop state: (ready=started, processed=completed) of the training batches and of
    the validation batches (over the epoch, and in the current validation)."""

    def progress(counts):
        ready, done = counts
        return {"ready": ready, "started": ready, "processed": done, "completed": done}

    return {
        "loops": {
            "fit_loop": {
                "epoch_loop.batch_progress": {"total": progress(train)},
                "epoch_loop.state_dict": {"_batches_that_stepped": 3},
                "epoch_loop.val_loop.batch_progress": {
                    "total": progress(val_total),
                    "current": progress(val_current),
                },
            }
        }
    }


def test_stop_inside_a_training_batch_counts_the_loggers_step_once():
    # RL step 4's rollout cut short (3 batches done): Lightning's restart adds one to the
    # loggers' batch counter, as for a checkpoint taken before the counter moved
    ckpt = _loops(train=(4, 3), val_total=(2, 2), val_current=(2, 2))
    stopping.resumable_loops(ckpt)
    fit = ckpt["loops"]["fit_loop"]
    assert fit["epoch_loop.state_dict"]["_batches_that_stepped"] == 2
    assert fit["epoch_loop.val_loop.batch_progress"]["current"]["completed"] == 2


def test_stop_inside_a_validation_restarts_it_from_its_first_batch():
    # the second validation of the epoch (2 batches each), stopped after its first batch (the
    # second was started and skipped): Lightning must redo the whole validation, not finish it
    ckpt = _loops(train=(4, 4), val_total=(4, 3), val_current=(2, 1))
    stopping.resumable_loops(ckpt)
    val = ckpt["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    assert val["total"] == {"ready": 3, "started": 3, "processed": 2, "completed": 2}
    assert val["current"] == {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    assert ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == 3


# ----------------------------------------------------------------------------- real runs
# small settings: a 40-step warm start (rewards not all zero: checked), 4 RL steps of 4 tasks,
# validation every 2 steps over 2 batches (tests/test_pipeline.py's overlap runs use them too)
SMALL_RUN = [
    "data.tasks_per_step=4",
    "data.num_val_tasks=16",
    "data.val_batch_size=8",
    "warmstart.steps=40",
    "warmstart.num_demos=64",
    "data.steps=4",
    "trainer.val_check_interval=2",
    "callbacks.export=null",
]
COMMON = [
    *SMALL_RUN,
    "trainer.enable_progress_bar=false",
    "callbacks.rich_progress=null",
    "trainer.enable_model_summary=false",
]
# generous: a hang, not a slow machine, is what this catches
TIMEOUT_S = 600


def stop_lines(output: str) -> list[str]:
    """The messages of the "stopped by ..." log lines in a run's console output or launch.log."""
    return [m for m in log_messages(output) if m.startswith("stopped by ")]


def launch(run_dir: Path, cache: Path, signal_at: str | None = None):
    """``python launch.py`` in its own session; returns (return code, console output: stdout and
    stderr together, session leftovers)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop(stopping.TEST_HOOK, None)
    if signal_at:
        env[stopping.TEST_HOOK] = signal_at
    args = [*COMMON, f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"]
    proc = subprocess.Popen(
        [sys.executable, "launch.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    err, _ = proc.communicate(timeout=TIMEOUT_S)  # stderr is in stdout
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return proc.returncode, err, left


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_cache):
    """The metrics of the run uninterrupted, and its cache: the session's (its warm start is the
    one tests/test_pipeline.py's overlap runs use too, trained once)."""
    base = tmp_path_factory.mktemp("uninterrupted")
    rc, err, _ = launch(base / "run", shared_cache)
    assert rc == 0, err[-3000:]
    rows = metrics_rows(base / "run")
    assert any(r["rollout/reward_mean"] != 0 for r in rows_with(rows, "rollout/reward_mean"))
    return rows, shared_cache


# (AGENTRL_SIGNAL_AT, where the line says it stopped, what it names as saved)
CASES = [
    # between two optimizer steps of the warm start (its own cache: it is trained here)
    ("warmstart:20", "in the warm start at its step 20", "warm-start step 20"),
    # between turns: the step's episodes are dropped, last.ckpt is at the step before
    ("rollout:2", "in the rollout of RL step 2", "RL step 1"),
    # the last step's update runs to its end; the final validation is cut short
    ("update:4", "in the validation after RL step 4", "RL step 4"),
    # a validation in the middle of the run, cut short after its first batch
    ("validation:2", "in the validation after RL step 2", "RL step 2"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("signal_at", "where", "saved"), CASES, ids=[c[0] for c in CASES])
def test_sigterm_saves_and_the_rerun_matches(tmp_path, uninterrupted, signal_at, where, saved):
    want, shared_cache = uninterrupted
    run_dir = tmp_path / "run"
    cache = tmp_path / "cache" if signal_at.startswith("warmstart") else shared_cache
    rc, err, left = launch(run_dir, cache, signal_at)
    print(f"replay: {stopping.TEST_HOOK}={signal_at}\n{err[-2000:]}")
    assert rc == 143, err[-3000:]
    assert not left, f"processes left behind: {left}"
    # once on the console, and in the run's log file (which bench/real_models.py reads)
    lines = stop_lines(err)
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM"), err[-3000:]
    assert stop_lines((run_dir / "launch.log").read_text()) == lines
    assert f" {where};" in lines[0] and f"checkpoint of {saved}:" in lines[0], lines[0]
    assert f"resume: python launch.py {COMMON[0]}" in lines[0]
    assert lines[0].endswith(f"hydra.run.dir={run_dir}")
    path = lines[0].split(f"checkpoint of {saved}: ")[1].split(";")[0]
    if signal_at.startswith("warmstart"):
        assert torch.load(path, weights_only=True)["step"] == 20
    else:
        assert checkpoint_rl_step(path) == int(saved.split()[-1])
    rc, err, left = launch(run_dir, cache)
    assert rc == 0, err[-3000:]
    assert not left
    rows = metrics_rows(run_dir)
    assert_same_steps_and_values(rows, want)
    # the loggers' step column too: the resumed run's rows are the uninterrupted run's
    assert [r.get("step") for r in rows] == [r.get("step") for r in want]
