"""Stopping on SIGTERM/SIGINT (agentrl/stopping.py): the handler's flag and the exit codes here;
real ``launch.py`` runs signalled at each safe point, then resumed, in the slow tests below."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from agentrl import stopping, warmstart_stop
from agentrl.train import checkpoint_rl_step
from agentrl.warmstart import _check, _stop_with_the_computing_rank
from agentrl.warmstart_stop import StopFiles
from tests.conftest import SHORT_WARMSTART_LR
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


def test_warm_start_stop_files_of_another_warm_start_or_attempt_are_ignored(tmp_path, monkeypatch):
    files = StopFiles(tmp_path, "abc")
    assert files.requested() is None and files.stop_record() is None
    files.request(signal.SIGINT)
    files.stopped(signal.SIGTERM, 7, ("warm-start step 7", "/cache/abc.partial.ckpt"))
    assert files.requested() == signal.SIGINT
    record = files.stop_record()
    assert (record["signal"], record["step"], record["saved"][0]) == (
        "SIGTERM",
        7,
        "warm-start step 7",
    )
    assert StopFiles(tmp_path, "other").stop_record() is None  # another warm start's
    # a process started after they were written: a previous attempt's
    monkeypatch.setattr(warmstart_stop, "STARTED", time.time() + 60)
    assert files.requested() is None and files.stop_record() is None
    files.clear()
    assert not list(tmp_path.iterdir())


def test_a_signal_while_waiting_reaches_the_callback_once():
    got = []
    with stopping.handle_signals():
        with stopping.on_signal(got.append):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        assert got == [signal.SIGTERM]
    with stopping.handle_signals():  # requested before the wait: at once
        os.kill(os.getpid(), signal.SIGINT)
        with stopping.on_signal(got.append):
            pass
    assert got == [signal.SIGTERM, signal.SIGINT]


def test_the_computing_rank_stops_at_a_waiting_ranks_request_and_records_it(tmp_path):
    files = StopFiles(tmp_path, "abc")
    with stopping.handle_signals():
        _check(files, 2)  # nothing asked: it goes on
        files.request(signal.SIGTERM)  # a waiting rank's signal
        stopping.STATE.saved = ("warm-start step 3", "/cache/abc.partial.ckpt")
        with pytest.raises(stopping.StopRequested) as info:
            _check(files, 3)
    assert (info.value.phase, info.value.step, info.value.exit_code) == ("warm start", 3, 143)
    record = files.stop_record()
    assert (record["step"], record["saved"][1]) == (3, "/cache/abc.partial.ckpt")


def test_a_waiting_rank_stops_where_the_computing_rank_stopped(tmp_path):
    files = StopFiles(tmp_path, "abc")
    with stopping.handle_signals():
        _stop_with_the_computing_rank(files)  # none stopped: it goes on
        files.stopped(signal.SIGTERM, 5, ("warm-start step 5", "/cache/abc.partial.ckpt"))
        with pytest.raises(stopping.StopRequested) as info:
            _stop_with_the_computing_rank(files)
        saved = stopping.STATE.saved
    assert (info.value.phase, info.value.step, info.value.exit_code) == ("warm start", 5, 143)
    assert saved == ("warm-start step 5", "/cache/abc.partial.ckpt")
    line = stopping.summary(info.value, str(tmp_path))
    assert line.startswith("stopped by SIGTERM in the warm start at its step 5; checkpoint of")


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
    SHORT_WARMSTART_LR,
    "warmstart.num_demos=64",
    "data.steps=4",
    "trainer.val_check_interval=2",
    "callbacks.export=null",
]
# a launched run's console without progress bars and model summary
QUIET = [
    "trainer.enable_progress_bar=false",
    "callbacks.rich_progress=null",
    "trainer.enable_model_summary=false",
]
COMMON = [*SMALL_RUN, *QUIET]
# generous: a hang, not a slow machine, is what this catches
TIMEOUT_S = 600


def stop_lines(output: str) -> list[str]:
    """The messages of the "stopped by ..." log lines in a run's console output or launch.log."""
    return [m for m in log_messages(output) if m.startswith("stopped by ")]


def launch(run_dir: Path, cache: Path, signal_at: str | None = None):
    """``python launch.py`` in its own session; returns (return code, console output: stdout and
    stderr together, session leftovers)."""
    hook = {stopping.TEST_HOOK: signal_at} if signal_at else {}
    return launch_with(COMMON, run_dir, cache, OMP_NUM_THREADS="1", **hook)


def launch_with(args: list[str], run_dir: Path, cache: Path, **env_vars: str):
    """``python launch.py *args`` in its own session, writing to ``run_dir`` with cache
    ``cache``, ``tests.`` targets allowed (a test's callbacks), ``env_vars`` added to its
    environment (the test hook only from there); returns (return code, console output: stdout
    and stderr together, session leftovers)."""
    env = {k: v for k, v in os.environ.items() if k != stopping.TEST_HOOK}
    env.update(PYTHONPATH=str(ROOT), AGENTRL_EXTRA_TARGETS="tests.", **env_vars)
    proc = spawn([*args, f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"], env)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, out, leftovers(proc.pid)


def spawn(args: list[str], env: dict) -> subprocess.Popen:
    """``python launch.py *args`` in a session of its own, stderr merged into its stdout."""
    return subprocess.Popen(
        [sys.executable, "launch.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def leftovers(session: int) -> list[int]:
    """The live processes of a session (a run started with ``start_new_session``)."""
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == session and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return left


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


# ----------------------------------------------------------------------------- DDP, warm start
# Lightning's own launcher starts rank 1 after rank 0's warm start (rank 1 reuses it); ranks that
# srun or torchrun start together each run the warm start: one computes it under the cache
# entry's lock, the others wait for the lock. Those are started here as torchrun would.


class Rank:
    """One rank of a ``trainer=ddp`` run of 2 processes started by hand (LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR/PORT set, as torchrun sets them), in its own session; its console output is
    read as it comes."""

    def __init__(self, rank: int, run_dir: Path, cache: Path, port: int):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        env.pop(stopping.TEST_HOOK, None)
        env.update(
            LOCAL_RANK=str(rank),
            NODE_RANK="0",
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        args = [*COMMON, "trainer=ddp", f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"]
        if rank:  # the job name and config files of a rank Lightning's launcher starts
            args += [f"hydra.job.name=train_ddp_process_{rank}", "hydra.output_subdir=null"]
        self.proc = spawn(args, env)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append(None)  # the end of the output
            self.changed.notify_all()

    def wait_for(self, text: str) -> None:
        """Until the rank prints a line with ``text`` (it fails if the rank ends first)."""
        with self.changed:
            self.changed.wait_for(
                lambda: any(line is None or text in line for line in self.lines), TIMEOUT_S
            )
            found = any(line is not None and text in line for line in self.lines)
        assert found, f"no {text!r} in:\n{self.output()[-3000:]}"

    def output(self) -> str:
        with self.changed:
            return "".join(line for line in self.lines if line is not None)

    def finish(self) -> tuple[int, str, list[int]]:
        """(exit code, console output, processes left in its session); killed after
        TIMEOUT_S (a hang)."""
        try:
            self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.reader.join()
        return self.proc.returncode, self.output(), leftovers(self.proc.pid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(run_dir: Path, cache: Path) -> list[tuple[int, str, list[int]]]:
    """Both ranks started together, to their end."""
    port = free_port()
    ranks = [Rank(r, run_dir, cache, port) for r in (0, 1)]
    return [rank.finish() for rank in ranks]


@pytest.fixture(scope="module")
def uninterrupted_ddp(uninterrupted, tmp_path_factory):
    """The metrics of the 2-rank run uninterrupted, from the uninterrupted run's warm start."""
    _, cache = uninterrupted
    run_dir = tmp_path_factory.mktemp("uninterrupted_ddp") / "run"
    for rc, out, left in run_ranks(run_dir, cache):
        assert rc == 0 and not left, out[-3000:]
    return metrics_rows(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [0, 1], ids=["rank0-computing", "rank1-waiting"])
def test_ddp_sigterm_in_the_warm_start_stops_both_ranks_and_the_rerun_matches(
    tmp_path, uninterrupted, uninterrupted_ddp, signalled
):
    """trainer=ddp, 2 ranks started together: rank 0 computes the warm start, rank 1 waits for
    its lock. SIGTERM to one of them alone (rank 0 computing, or rank 1 waiting) stops both at
    the same optimizer step: the progress is saved once, both exit 143, rank 0 prints the one
    stop line; the rerun continues the warm start and logs what the uninterrupted run logs."""
    _, shared_cache = uninterrupted
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    port = free_port()
    rank0 = Rank(0, run_dir, cache, port)
    rank0.wait_for("warm start: 64 demonstrations")  # it holds the lock and trains
    rank1 = Rank(1, run_dir, cache, port)
    rank1.wait_for("warm start: waiting for")
    os.kill((rank0, rank1)[signalled].proc.pid, signal.SIGTERM)
    (rc0, out0, left0), (rc1, out1, left1) = rank0.finish(), rank1.finish()
    assert (rc0, rc1) == (143, 143), out0[-3000:] + out1[-3000:]
    assert not left0 and not left1, f"processes left behind: {left0 + left1}"
    (line,) = stop_lines(out0)
    assert stop_lines(out1) == []
    assert stop_lines((run_dir / "launch.log").read_text()) == [line]
    assert line.startswith("stopped by SIGTERM in the warm start at its step "), line
    step = int(line.split("at its step ")[1].split(";")[0])
    path = Path(line.split(f"checkpoint of warm-start step {step}: ")[1].split(";")[0])
    assert path.parent == cache / "warmstart" and path.name.endswith(".partial.ckpt")
    assert 0 < step < 40 and torch.load(path, weights_only=True)["step"] == step
    # the rank that was not signalled trained nothing more: one save, at that step
    assert "warm start: resuming" not in out0 + out1
    results = run_ranks(run_dir, cache)
    for rc, out, left in results:
        assert rc == 0 and not left, out[-3000:]
    assert f"warm start: resuming at step {step} of 40" in results[0][1] + results[1][1]
    # the warm start continued where it stopped: the uninterrupted one's weights
    (got,) = cache.glob("warmstart/*/model.pt")
    want = torch.load(shared_cache / "warmstart" / got.parent.name / "model.pt", weights_only=True)
    got = torch.load(got, weights_only=True)
    assert all(torch.equal(got[k], want[k]) for k in want)
    rows = metrics_rows(run_dir)
    assert_same_steps_and_values(rows, uninterrupted_ddp)
    assert [r.get("step") for r in rows] == [r.get("step") for r in uninterrupted_ddp]
