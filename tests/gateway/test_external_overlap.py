"""`rollout.pipeline=overlap` with `env=external` (`experiment=openai_agent`): the rollout thread
runs the example agent programs against its own gateway, served by its snapshot of the policy,
while the trainer updates; a SIGTERM with agent programs running kills them at once (the
rollout is abandoned and saved with its snapshot's weights), leaves no program behind, and the
rerun logs what the uninterrupted run logs. launch.py in its own session, the gateway tests'
WARM warm start (shared cache)."""

from __future__ import annotations

import os
import re
import signal

import lightning as L
import psutil
import pytest

from tests import test_stopping as ts
from tests.gateway.conftest import WARM
from tests.test_pipeline import same_rows, stopped_pipeline
from tests.test_train import metrics_rows, rows_with

ARGS = [
    *WARM,
    "rollout.pipeline=overlap",
    "data.tasks_per_step=4",
    "algorithm.group_size=4",
    "data.steps=4",
    "data.num_val_tasks=4",
    "data.val_batch_size=4",
    "trainer.val_check_interval=2",
    "callbacks.export=null",
    *ts.QUIET,
]
MARK = "AGENTRL_TEST_RUN_MARK"


class SignalMidRollout(L.Callback):
    """SIGTERM to this process once the rollout of RL step ``step + 1`` (in the pipeline's
    thread, during step ``step``'s update) has started ``after`` agent programs: the stop lands
    while programs run, not between rollouts."""

    def __init__(self, step: int, after: int):
        self.step, self.after = step, after

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.rl_step != self.step - 1:
            return
        runner = pl_module.pipeline.runner  # the step's commit starts its next rollout with it
        spawn, started = runner._spawn, []

        def counting(*args, **kwargs):
            proc = spawn(*args, **kwargs)
            started.append(proc)
            if len(started) == self.after:
                os.kill(os.getpid(), signal.SIGTERM)
            return proc

        def gated(*args, **kwargs):
            del runner.run  # the runner's own method again: only the next rollout counts
            runner._spawn = counting
            try:
                return runner.run(*args, **kwargs)
            finally:
                del runner._spawn

        runner.run = gated


def agents_of(mark: str) -> list[int]:
    """Live processes started with ``MARK=mark`` in their environment (the agent programs run
    in sessions of their own, out of the run's)."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(MARK) == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return found


def launch(run_dir, cache, *extra: str):
    rc, out, left = ts.launch_with([*ARGS, *extra], run_dir, cache, **{MARK: str(run_dir)})
    return rc, out, left + agents_of(str(run_dir))


@pytest.mark.slow
def test_overlap_with_agent_programs_trains_and_a_stopped_run_resumes_exactly(tmp_path, warm_cache):
    rc, out, left = launch(tmp_path / "want", warm_cache)
    assert rc == 0, out[-3000:]
    assert not left, f"processes left behind: {left}"
    want = metrics_rows(tmp_path / "want")
    steps = rows_with(want, "pipeline/staleness_mean")
    assert [r["pipeline/staleness_mean"] for r in steps] == [0.0, 1.0, 1.0, 1.0]
    assert all(r["gateway/rollouts"] == 16 and r["gateway/crashes"] == 0 for r in steps)
    # the first batch is served by the thread's snapshot of the weights its update trains
    assert steps[0]["rollout/logprob_diff"] < 1e-4
    assert any("loss/grad_norm" in r for r in steps[:-1]), "no update: staleness would not show"
    # later batches come from the weights before the last update: the importance weights show it
    assert any(abs(r["pipeline/is_weight_mean"] - 1) > 1e-4 for r in steps[1:])

    signal_at = [
        "+callbacks.sigterm._target_=tests.gateway.test_external_overlap.SignalMidRollout",
        "+callbacks.sigterm.step=2",
        "+callbacks.sigterm.after=4",
    ]
    rc, out, left = launch(tmp_path / "run", warm_cache, *signal_at)
    assert rc == 143, out[-3000:]
    assert not left, f"processes left behind: {left}"
    # the programs running were killed and the rest never started
    (abandoned,) = re.findall(r"rollout abandoned by a stop: (\d+) agent programs killed, (\d+) "
                              r"not started", out)  # fmt: skip
    assert int(abandoned[0]) >= 1 and int(abandoned[1]) >= 1
    state = stopped_pipeline(out, 2)
    pending = state["pending"]
    assert state["ready"] is None and pending["trajs"] is None and pending["weights"]
    rc, out, left = launch(tmp_path / "run", warm_cache)
    assert rc == 0, out[-3000:]
    assert not left
    same_rows(metrics_rows(tmp_path / "run"), want)
