"""Stopping a run on SIGTERM or SIGINT at the next safe point, with a checkpoint to resume from.

``kill``, ``timeout``, ``docker stop``, systemd and SLURM preemption send SIGTERM, then SIGKILL a
few seconds later; Ctrl-C sends SIGINT. The handler only sets a flag (raising inside a torch op
is not safe); the loop checks it at safe points and raises :class:`StopRequested` there:

    warm start   after each optimizer step: its progress is saved beside its cache entry
                 (``<key>.partial.ckpt``) and the rerun continues it
    rollout      between turns the episodes are abandoned; the step is redone on resume
    score ... log  a step whose rollout finished runs to its end (score, update, sync, log)
    validation   the remaining validation batches are skipped; it is redone on resume

At a stop during ``trainer.fit`` :class:`StopAtSafePoints` writes ``last.ckpt`` (the last
completed RL step, as a validation would) and the run exits with 128 + the signal's number
(143 for SIGTERM, 130 for SIGINT) and one line naming the phase, the RL step and the command
that resumes (logged: on the console and in the run's ``launch.log``). A second Ctrl-C stops
at once, without a checkpoint.

Lightning installs its own SIGTERM handler for each ``fit``/``validate`` (it raises
``SIGTERMException`` at batch ends and, under DDP, broadcasts from inside the handler);
:class:`StopAtSafePoints` puts this one back as each starts, and forwards the signal to the
ranks Lightning's launcher started, as Lightning's does. Under DDP every rank checks the flag
where all ranks are in step (before a step, after the rollout, at the end of validation) and
they stop together if any rank got the signal; rank 0 then waits for the ranks it started
(:func:`adopt_ranks`). In the warm start, before the ranks connect, they agree through the run
directory instead (agentrl/warmstart_stop.py). SIGUSR1/SIGUSR2 (SLURM requeue) are left alone.

``AGENTRL_SIGNAL_AT=<phase>:<step>[:<signal>]`` (phases: warmstart, rollout, update, validation)
makes the run send the signal to itself when it enters that phase at that step: a test hook that
replays a stop at an exact point.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from agentrl import distributed as D

log = logging.getLogger("agentrl")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
TEST_HOOK = "AGENTRL_SIGNAL_AT"


class StopRequested(BaseException):
    """Raised at a safe point after a stop signal. A BaseException, so that the ``except
    Exception`` guards around env steps and rewards do not swallow it."""

    def __init__(self, signum: int, phase: str, step: int):
        super().__init__(f"{signal.Signals(signum).name} in {phase} at step {step}")
        self.signum = signum
        self.phase = phase
        self.step = step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class _State:
    signum: int | None = None
    installed: bool = False
    trainer: L.Trainer | None = None
    # what was saved at the stop: (description, path)
    saved: tuple[str, str] | None = None
    # Lightning's launcher that started the other ranks (trainer=ddp without SLURM), and those
    # ranks once a stop took them over from Lightning's child-process observer
    launcher: object | None = None
    ranks: list = field(default_factory=list)
    previous: dict = field(default_factory=dict)
    # called with the signal's number as a stop is requested (see on_signal)
    notify: object | None = None


STATE = _State()


def _handler(signum, frame) -> None:
    if STATE.signum is not None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, no checkpoint
        return
    STATE.signum = signum
    if STATE.launcher is not None:
        STATE.launcher.kill(signum)  # the ranks Lightning started as subprocesses (trainer=ddp)
    if STATE.notify is not None:
        STATE.notify(signum)
    name = signal.Signals(signum).name
    again = " (Ctrl-C again stops at once, without a checkpoint)" if signum == signal.SIGINT else ""
    os.write(2, f"\nreceived {name}: stopping at the next safe point{again}\n".encode())


def reclaim() -> None:
    """Put this module's handlers back (after Lightning installed its SIGTERM handler)."""
    if STATE.installed:
        for sig in SIGNALS:
            signal.signal(sig, _handler)


def claim(trainer) -> None:
    """Called as a Trainer's fit or validate starts, after Lightning installed its SIGTERM
    handler: ours goes back. Lightning's composes with the handler it found (ours), so a
    signal in between set our flag too; Lightning's own flag is cleared, so that it does not
    raise its SIGTERMException (which saves nothing) at a batch end."""
    STATE.trainer = trainer
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if getattr(launcher, "procs", None):  # the first Trainer of the run started the other ranks
        STATE.launcher = launcher
    reclaim()
    connector = getattr(trainer, "_signal_connector", None)
    if connector is not None and STATE.installed:
        connector.received_sigterm = False


@contextlib.contextmanager
def handle_signals():
    """Within: SIGTERM and SIGINT request a stop (see the module docstring)."""
    STATE.signum, STATE.saved, STATE.trainer = None, None, None
    STATE.launcher, STATE.ranks = None, []
    STATE.previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    STATE.installed = True
    reclaim()
    try:
        yield STATE
    finally:
        # a stop belongs to the run that got it: later code in this process (another run, a
        # test) sees none; what was saved stays for the report
        STATE.installed, STATE.signum = False, None
        for sig, old in STATE.previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def on_signal(callback):
    """Within: ``callback(signum)`` runs as a stop is requested, also while this process waits
    in a blocking call (a waiting rank of the warm start tells the computing one); at once if
    one was requested before."""
    STATE.notify = callback
    try:
        if STATE.signum is not None:
            callback(STATE.signum)
        yield
    finally:
        STATE.notify = None


def request(signum: int) -> None:
    """A stop asked for by another rank (through a file, before any collective exists): as if
    this process had got ``signum``."""
    if STATE.signum is None and STATE.installed:
        STATE.signum = signum


def requested() -> bool:
    """Whether this process got a stop signal (no collective: for per-rank early exits)."""
    return STATE.signum is not None


def check(phase: str, step: int, sync: bool = True) -> None:
    """Raise StopRequested if a stop was requested; with ``sync`` (every rank must call it at the
    same point) the ranks agree first, so all of them stop when any got the signal."""
    flag = requested()
    if sync and D.is_distributed():
        flag = D.any_rank(flag)
    if flag:
        adopt_ranks()
        raise StopRequested(STATE.signum or signal.SIGTERM, phase, step)


def adopt_ranks() -> None:
    """At a stop, rank 0 takes the ranks it started (Lightning's subprocess launcher) over from
    Lightning's child-process observer, which SIGKILLs rank 0 as soon as one of them exits
    non-zero: every rank exits 143 at a stop, in no set order, so rank 0 could be killed before
    its line. The observer watches the launcher's ``procs`` list, which is emptied here; rank 0
    waits for the ranks itself before it exits (:func:`wait_for_ranks`)."""
    procs = getattr(STATE.launcher, "procs", None)
    if procs:
        STATE.ranks.extend(procs)
        procs.clear()


def wait_for_ranks(timeout_s: float = 60.0) -> None:
    """Rank 0 at a stop: the ranks it started exit (they stop at the same safe point); one still
    running after ``timeout_s`` is killed, as Lightning's observer would have."""
    for proc in STATE.ranks:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "rank process %d still running %.0f s after the stop: killed", proc.pid, timeout_s
            )
            proc.kill()
            proc.wait()
    STATE.ranks = []


def entered(phase: str, step: int) -> None:
    """The test hook: send ``AGENTRL_SIGNAL_AT``'s signal to this process on entering ``phase``
    at ``step``."""
    spec = os.environ.get(TEST_HOOK)
    if not spec or STATE.signum is not None or not STATE.installed:
        return
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != phase or parts[1] != str(step):
        return
    sig = signal.Signals[parts[2]] if len(parts) > 2 else signal.SIGTERM
    os.write(2, f"{TEST_HOOK}={spec}: sending {sig.name} to pid {os.getpid()}\n".encode())
    os.kill(os.getpid(), sig)


# ----------------------------------------------------------------------------- checkpoints
def resumable_loops(checkpoint: dict) -> None:
    """Rewrite the loop state of a checkpoint taken at a stop so that Lightning's restart redoes
    exactly the unfinished work: a validation cut short is run again from its first batch, a
    training batch cut short (its rollout) is run again.

    Lightning restores mid-validation state as "finish the validation from the batch it was
    at", which would lose the episodes of the batches already run; and it assumes a checkpoint
    taken inside a batch was saved before the batch counter for the loggers moved on."""
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit:
        return
    train = fit["epoch_loop.batch_progress"]["total"]
    val = fit["epoch_loop.val_loop.batch_progress"]
    if train["completed"] < train["ready"]:
        # inside a training batch: Lightning's restart counts one more batch for the loggers
        fit["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
    else:  # inside a validation (the only other place a stop is raised during fit)
        done = val["current"]["completed"]
        for counts in (val["total"], val["current"]):
            counts["processed"] = counts["completed"] = counts["completed"] - done
            counts["ready"] = counts["started"] = counts["completed"] + 1


class StopAtSafePoints(L.Callback):
    """Added to every Trainer of a run: reclaims SIGTERM/SIGINT from Lightning, checks the flag
    before each RL step, and at a stop during fit writes last.ckpt through the run's
    ``RLModelCheckpoint`` (the state of the last completed RL step)."""

    def __init__(self):
        self._saving = False

    def on_train_start(self, trainer, pl_module) -> None:
        claim(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        claim(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = getattr(pl_module, "rl_step", trainer.global_step)
        check("start", step + 1)

    def on_exception(self, trainer, pl_module, exception) -> None:
        try:
            self._save_at_stop(trainer, pl_module, exception)
        finally:
            # rollout.pipeline=overlap: its rollout thread stops with the run, on every exception
            pipeline = getattr(pl_module, "pipeline", None)
            if pipeline is not None:
                pipeline.close()

    def _save_at_stop(self, trainer, pl_module, exception) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if not isinstance(exception, StopRequested) or trainer.state.fn != TrainerFn.FITTING:
            return
        ckpt = trainer.checkpoint_callback
        if not hasattr(ckpt, "save_at_stop"):
            return
        self._saving = True
        try:
            path = ckpt.save_at_stop(trainer)
        finally:
            self._saving = False
        rl_step = getattr(pl_module, "rl_step", trainer.global_step)
        STATE.saved = (f"RL step {rl_step}", path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._saving:
            resumable_loops(checkpoint)


# ----------------------------------------------------------------------------- the last line
def resume_command(output_dir: str) -> str:
    """The command that resumes this run: the same overrides in the same run directory (a
    ``ckpt_path=`` would resume from that file again, so it is left out)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under @hydra.main (e.g. agentrl.train.run from Python)
        overrides = []
    keep = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.run.dir=", "ckpt_path="))]
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "launch.py"
    return shlex.join(["python", script, *keep, f"hydra.run.dir={output_dir}"])


def summary(exc: StopRequested, output_dir: str) -> str:
    """The one line printed at a stop: where, what was saved, how to resume."""
    where = {
        "start": f"RL step {exc.step}",
        "reward model rollouts": "the rollouts that train the reward model (none are kept)",
        "warm start": f"the warm start at its step {exc.step}",
        "validation": f"the validation after RL step {exc.step}"
        if exc.step
        else "the validation before RL step 1",
    }.get(exc.phase, f"the {exc.phase} of RL step {exc.step}")
    if STATE.saved:
        saved = f"checkpoint of {STATE.saved[0]}: {STATE.saved[1]}"
    else:
        saved = "nothing to save (RL had not started)"
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        if last.exists():
            saved = f"nothing new to save ({last} is current)"
    name = signal.Signals(exc.signum).name
    where = f"before {where}" if exc.phase == "start" else f"in {where}"
    return f"stopped by {name} {where}; {saved}; resume: {resume_command(output_dir)}"


@rank_zero_only
def report(exc: StopRequested, output_dir: str) -> None:
    """The line, through the run's logging: on the console once and in the run's log file
    (``launch.log``, which tools such as bench/real_models.py read). Without any logging
    handler (``hydra/job_logging=none``, a run from Python) it goes to stderr."""
    line = summary(exc, output_dir)
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info("%s", line)
    else:
        print(line, file=sys.stderr)
