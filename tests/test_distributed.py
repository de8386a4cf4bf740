"""trainer=ddp and trainer=fsdp with 2 CPU processes (gloo), against one process (slow tier).

To compare runs with different numbers of processes, the sampled episodes must not depend on
how the step's tasks are split over ranks: ``GroupSeededModule`` samples each task's group with a
generator seeded by (seed, step, task id) (the real module seeds one generator per rank, which is
the right thing for training and the wrong thing for this comparison). Everything else is the
real module: sharding, loss weights over the global batch, gradient averaging, clipping, the
optimizer, validation aggregated over ranks, rank-0 files, sharded checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import lightning as L
import psutil
import pytest
import torch

from agentrl import stopping
from agentrl.module import AgentRLModule
from agentrl.rewards.base import RewardOutput
from agentrl.train import run

ROOT = Path(__file__).resolve().parents[1]

# float32 sums over a different grouping of episodes (per rank, then all-reduced) differ from
# one process in the last bits; after 3 AdamW steps at lr 1e-3 the weights stay this close
PARAM_ATOL = 2e-5


class GroupSeededModule(AgentRLModule):
    """Samples each task's group with its own generator: episodes independent of sharding."""

    def _rollout(self, tasks, step: int):
        params = self.runner.sampling(self.temperature, self.top_p, greedy=False)
        self.policy.eval()
        out = []
        from agentrl import distributed as D

        with D.gathered(self.policy):
            for i, task in enumerate(tasks):
                g = torch.Generator(device=self.device)
                g.manual_seed(self.seed * 1_000_003 + step * 7919 + zlib.crc32(task.id.encode()))
                group = self.algorithm.group_size
                out.extend(self.runner.run([task] * group, [i] * group, params, g))
        self.policy.train()
        return out


class LengthReward:
    """A reward that varies inside a group (so every update is real): generated length mod 3."""

    def __call__(self, task, trajectory):
        return RewardOutput(float(trajectory.num_generated % 3) / 2)


class DumpParams(L.Callback):
    """At the end of fit every rank saves its parameters (to compare ranks)."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer, pl_module):
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.policy.state_dict().items()}
        torch.save(state, self.dirpath / f"rank{trainer.global_rank}.pt")


class SignalAt(L.Callback):
    """Sends SIGTERM to this process (rank ``rank`` only) as RL step ``step`` ends; every rank
    writes where its stop was raised to ``dirpath/rank<R>.stop`` (phase, step, pid)."""

    def __init__(self, rank: int, step: int, dirpath: str):
        self.rank, self.step, self.dirpath = rank, step, Path(dirpath)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == self.rank and pl_module.rl_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, stopping.StopRequested):
            self.dirpath.mkdir(parents=True, exist_ok=True)
            where = f"{exception.phase} {exception.step} {os.getpid()}"
            (self.dirpath / f"rank{trainer.global_rank}.stop").write_text(where)


COMMON = [
    "warmstart.enabled=false",
    "data.tasks_per_step=4",
    "algorithm.group_size=4",
    # one minibatch: the global minibatch is then the same set of episodes in both runs
    "algorithm.minibatches=1",
    "data.steps=3",
    "data.num_val_tasks=6",
    "data.val_batch_size=6",
    "trainer.val_check_interval=1",
    "optimizer.lr=1e-3",
    "module._target_=tests.test_distributed.GroupSeededModule",
    "reward._target_=tests.test_distributed.LengthReward",
    "~reward.success_weight",
    "~reward.format_bonus",
    "~reward.step_penalty",
    "~reward.invalid_penalty",
    "callbacks.step_checkpoints=null",
    "callbacks.rich_progress=null",
    "trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
]


def metrics_rows(run_dir) -> list[dict[str, float]]:
    with open(Path(run_dir) / "metrics.csv") as f:
        return [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]


def series(rows, key):
    return [(r["train/rl_step"], r[key]) for r in rows if key in r]


def launch(run_dir: Path, cache: Path, *overrides: str, check: bool = True):
    """``python launch.py`` in a subprocess (Lightning starts the other rank from it)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AGENTRL_EXTRA_TARGETS": "tests.",
        "AGENTRL_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "launch.py", f"hydra.run.dir={run_dir}", *COMMON, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, the same global batch."""
    from tests.conftest import compose_config

    tmp = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
        run(compose_config(list(COMMON), tmp / "run", tmp / "cache"))
    return {"rows": metrics_rows(tmp / "run"), "policy": policy_of(tmp / "run")}


def policy_of(run_dir) -> dict[str, torch.Tensor]:
    """The policy's weights in a run's last checkpoint."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}


def rank_params(folder) -> dict[str, torch.Tensor]:
    """Each rank's parameters at the end of fit (``DumpParams``); the ranks must hold the same
    weights. Returns rank 0's."""
    rank0 = torch.load(folder / "rank0.pt", weights_only=True)
    rank1 = torch.load(folder / "rank1.pt", weights_only=True)
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"ranks differ on {k}"
    return rank0


def assert_same_run(rows, single):
    for key in ("rollout/reward_mean", "val/success_rate", "val/reward_mean", "loss/policy"):
        got, want = series(rows, key), series(single["rows"], key)
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-4), key
    # every step updated the weights: the comparison is not between untouched initialisations
    norms = [v for _, v in series(single["rows"], "loss/grad_norm")]
    assert len(norms) == 3 and all(n > 0 for n in norms), norms


def assert_close_params(params: dict, single: dict):
    assert params.keys() >= single["policy"].keys()
    for k, v in single["policy"].items():
        torch.testing.assert_close(params[k].float(), v.float(), atol=PARAM_ATOL, rtol=0)


@pytest.mark.slow
def test_ddp_two_processes_match_one(single, tmp_path):
    run_dir = tmp_path / "ddp"
    launch(
        run_dir,
        tmp_path / "cache",
        "trainer=ddp",
        "+callbacks.dump._target_=tests.test_distributed.DumpParams",
        f"+callbacks.dump.dirpath={tmp_path / 'params'}",
    )
    assert_close_params(rank_params(tmp_path / "params"), single)
    assert_same_run(metrics_rows(run_dir), single)
    # only rank 0 writes the run's files
    assert (
        not list(run_dir.glob("**/*rank1*")) and (run_dir / "checkpoints" / "last.ckpt").is_file()
    )


@pytest.mark.slow
def test_fsdp_two_processes_sharded_checkpoint_resume_matches_one(single, tmp_path):
    """FSDP2 with 2 processes: crashes after RL step 2, resumes from its sharded last.ckpt in
    the same run directory, and ends where one process ends."""
    run_dir = tmp_path / "fsdp"
    crash = [
        "+callbacks.crash._target_=tests.test_train.CrashAt",
        "+callbacks.crash.step=2",
    ]
    proc = launch(run_dir, tmp_path / "cache", "trainer=fsdp", *crash, check=False)
    assert proc.returncode != 0 and "simulated crash" in proc.stderr + proc.stdout
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2, "a sharded checkpoint"
    launch(run_dir, tmp_path / "cache", "trainer=fsdp")
    log = (run_dir / "launch.log").read_text()
    assert "resuming from" in log and "(RL step 2;" in log
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run_dir / "export").state_dict()
    assert_close_params(exported, single)
    assert_same_run(metrics_rows(run_dir), single)


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0], ids=["rank1", "rank0-the-launcher"])
def test_ddp_sigterm_to_one_rank_stops_both_at_one_point_and_resumes(single, tmp_path, rank):
    """SIGTERM to one rank as RL step 2 ends (rank 1 alone, or rank 0, the process the user
    started, which forwards it to the rank it launched): the ranks agree at the next safe point
    (the validation after step 2: the signalled rank skips its batches, the other runs them),
    write one last.ckpt of RL step 2 together, exit 143; the rerun resumes and ends where one
    process ends."""
    from agentrl.train import checkpoint_rl_step
    from tests.test_stopping import stop_lines

    run_dir, stops = tmp_path / "ddp", tmp_path / "stops"
    signal_at = [
        "+callbacks.sigterm._target_=tests.test_distributed.SignalAt",
        f"+callbacks.sigterm.rank={rank}",
        "+callbacks.sigterm.step=2",
        f"+callbacks.sigterm.dirpath={stops}",
    ]
    proc = launch(run_dir, tmp_path / "cache", "trainer=ddp", *signal_at, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 143, output[-5000:]
    where = [(stops / f"rank{r}.stop").read_text().split() for r in (0, 1)]
    assert [w[:2] for w in where] == [["validation", "2"]] * 2, where
    # rank 1 (started by rank 0) goes too
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(int(where[1][2])).wait(timeout=60)
    (line,) = stop_lines(output)
    assert line.startswith("stopped by SIGTERM in the validation after RL step 2;"), line
    assert stop_lines((run_dir / "launch.log").read_text()) == [line]
    path = line.split("checkpoint of RL step 2: ")[1].split(";")[0]
    assert Path(path) == run_dir / "checkpoints" / "last.ckpt" and Path(path).is_file()
    assert checkpoint_rl_step(path) == 2
    assert not list(run_dir.glob("**/*rank1*"))
    launch(run_dir, tmp_path / "cache", "trainer=ddp")
    log = (run_dir / "launch.log").read_text()
    assert "resuming from" in log and "(RL step 2;" in log
    assert_same_run(metrics_rows(run_dir), single)
