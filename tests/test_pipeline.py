"""rollout.pipeline=overlap (agentrl/pipeline.py): the schedule (which weights make which batch),
the rollout thread's errors and stops, the checkpoint round trip, the importance correction.

The fast tests drive the pipeline with a stand-in module whose runner records the weights its
engine holds; the slow ones run the real loop (tiny model) end to end.
"""

from __future__ import annotations

import os
import signal
import threading
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from agentrl import stopping
from agentrl.batching import TokenBatch
from agentrl.pipeline import RolloutPipeline
from agentrl.step_data import ScoredBatch
from agentrl.types import Task, Trajectory
from tests import test_stopping as ts


def rollout_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("agentrl-rollout")]


class Versioned(torch.nn.Module):
    """A policy whose one trainable weight is its version (``version += 1``: an update)."""

    def __init__(self, version: float = 0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(float(version)))

    @property
    def version(self) -> float:
        return float(self.w.detach())

    @version.setter
    def version(self, value: float) -> None:
        with torch.no_grad():
            self.w.fill_(value)


class PushEngine:
    """An engine with its own weights (as vLLM): ``sync`` pushes the policy's version."""

    shares_weights = False

    def __init__(self):
        self.version = None

    def sync(self, policy) -> None:
        self.version = policy.version


class SharedEngine:
    """An engine on the trainer's model (as hf): the pipeline gives its thread a copy."""

    shares_weights = True

    def __init__(self, micro_batch_size: int = 1):
        self.micro_batch_size = micro_batch_size
        self.model = None

    def bind(self, model, tokenizer) -> None:
        self.model = model

    def sync(self, policy) -> None:
        pass

    @property
    def version(self) -> float:
        return float(self.model.weight.detach().sum())


class Runner:
    """Each episode's reward is the version of the weights its engine held; ``fail_at`` (a step's
    first task id) raises; ``gate`` (an Event) is waited for before returning."""

    def __init__(self, engine, fail_at=None, gate=None):
        self.engine, self.fail_at, self.gate, self.cancel = engine, fail_at, gate, None

    def sampling(self, *args, **kwargs):
        return None

    def run(self, tasks, groups, params, generator):
        if self.gate is not None:
            self.gate.wait()
        if tasks and tasks[0].id == self.fail_at:
            raise ValueError("agent exploded")
        v = self.engine.version
        return [
            Trajectory(task=t, token_ids=[1, 2], loss_mask=[0, 1], logprobs=[0.0, -1.0],
                       prompt_len=1, reward=float(v), group=g)
            for t, g in zip(tasks, groups)
        ]  # fmt: skip


def fake_module(engine, policy, **runner_kw):
    m = SimpleNamespace(
        engine=engine,
        policy=policy,
        tokenizer=None,
        algorithm=SimpleNamespace(group_size=2),
        temperature=1.0,
        top_p=1.0,
        device=torch.device("cpu"),
        rl_step=0,
        generator=lambda step, salt, device: torch.Generator().manual_seed(step),
    )
    m.make_runner = lambda eng, tok: Runner(eng, **runner_kw)
    return m


def tasks(step: int) -> list[Task]:
    return [Task(id=f"s{step}/t{i}", prompt="p") for i in range(2)]


def run_steps(pipe, module, steps: int, update) -> list[tuple[list[float], list[int]]]:
    """The loop rl_step runs: obtain, commit (the next rollout starts), then the update."""
    seen = []
    for step in range(steps):
        job = pipe.obtain(step, tasks(step))
        fresh, batch = pipe.commit(job, tasks(step + 1) if step + 1 < steps else None)
        seen.append(([t.reward for t in fresh], list(pipe.staleness)))
        update(module)  # what the main thread does while the next rollout runs
        module.rl_step = step + 1
    return seen


def test_batch_k_plus_1_comes_from_the_weights_before_update_k():
    policy = Versioned(0)
    module = fake_module(PushEngine(), policy)
    pipe = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    pipe.bind(module)

    def update(m):
        m.policy.version += 1

    seen = run_steps(pipe, module, 4, update)
    # step 0 generated at once (version 0, staleness 0); step k+1 started as step k began its
    # update, from version k: whatever the threads' timing
    assert [s[0] for s in seen] == [[0.0] * 4, [0.0] * 4, [1.0] * 4, [2.0] * 4]
    assert [s[1] for s in seen] == [[0] * 4, [1] * 4, [1] * 4, [1] * 4]
    assert pipe.stats()["pipeline/staleness_1_frac"] == 1.0
    assert not rollout_threads()


def test_reuse_keeps_groups_apart_and_stale_samples_are_dropped():
    policy = Versioned(0)
    module = fake_module(PushEngine(), policy)
    pipe = RolloutPipeline(max_staleness=1, max_reuse=2, correction="tis", correction_cap=2.0)
    pipe.bind(module)
    job = pipe.obtain(0, tasks(0))
    _, batch = pipe.commit(job, tasks(1))
    assert [t.group for t in batch] == [0, 0, 1, 1]
    module.rl_step = 1
    _, batch = pipe.commit(pipe.obtain(1, tasks(1)), tasks(2))
    # step 0's samples a second time (groups 0, 1), step 1's as groups 2, 3
    assert [t.task.id[:2] for t in batch] == ["s0"] * 4 + ["s1"] * 4
    assert [t.group for t in batch] == [0, 0, 1, 1, 2, 2, 3, 3]
    module.rl_step = 2
    _, batch = pipe.commit(pipe.obtain(2, tasks(2)), None)
    # step 0's are used up (max_reuse 2); step 1's are 1 version old (version 0 at step 2: 2
    # stale), step 2's generated from version 1
    assert pipe.buffer.stale_dropped == 4
    assert [t.task.id[:2] for t in batch] == ["s2"] * 4


def test_an_exception_in_the_rollout_thread_reaches_the_step_and_no_thread_is_left():
    module = fake_module(PushEngine(), Versioned(0), fail_at="s1/t0")
    pipe = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    pipe.bind(module)
    pipe.commit(pipe.obtain(0, tasks(0)), tasks(1))
    with pytest.raises(RuntimeError, match="rollout thread failed.*agent exploded") as info:
        pipe.obtain(1, tasks(1))
    assert isinstance(info.value.__cause__, ValueError)
    assert not rollout_threads()


def test_a_rollout_abandoned_by_a_stop_is_redone_from_its_own_weights(monkeypatch):
    torch.manual_seed(0)
    gate = threading.Event()
    policy = torch.nn.Linear(2, 2)
    module = fake_module(SharedEngine(), policy, gate=gate)
    pipe = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    pipe.bind(module)
    gate.set()
    job = pipe.obtain(0, tasks(0))  # generated at once
    gate.clear()
    launched = float(policy.weight.detach().sum())
    pipe.commit(job, tasks(1))  # snapshot, then the thread starts (and waits on the gate)
    with torch.no_grad():
        policy.weight.add_(1.0)  # the update of step 0, while the rollout runs
    module.rl_step = 1
    # a stop signal: the thread finds it set as it ends, so the rollout counts as abandoned
    monkeypatch.setattr(stopping.STATE, "signum", signal.SIGTERM)
    gate.set()
    state = pipe.state_dict()
    assert not rollout_threads()
    assert state["ready"] is None and state["pending"]["step"] == 1
    assert state["pending"]["version"] == 0 and state["pending"]["trajs"] is None
    monkeypatch.setattr(stopping.STATE, "signum", None)
    # resumed: a new process, the policy as checkpointed (after the update)
    resumed = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    module2 = fake_module(SharedEngine(), policy, gate=gate)
    module2.rl_step = 1
    resumed.bind(module2)
    resumed.load_state_dict(state, tasks)
    fresh, _ = resumed.commit(resumed.obtain(1, tasks(1)), None)
    # the weights of the snapshot the abandoned rollout had, not the current ones
    assert [t.reward for t in fresh] == pytest.approx([launched] * 4)
    assert resumed.staleness == [1] * 4
    assert launched != pytest.approx(float(policy.weight.detach().sum()))


def test_a_pushing_engines_abandoned_rollout_is_redone_from_the_weights_pushed(monkeypatch):
    """rollout=vllm: the engine holds the weights, so the pipeline keeps a copy of what it pushed
    with the rollout; a resume pushes that copy (and leaves the trainer's weights as they are)."""
    gate = threading.Event()
    module = fake_module(PushEngine(), Versioned(0), gate=gate)
    pipe = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    pipe.bind(module)
    gate.set()
    job = pipe.obtain(0, tasks(0))
    gate.clear()
    pipe.commit(job, tasks(1))  # version 0 pushed, the thread waits on the gate
    module.policy.version = 1  # the update of step 0
    module.rl_step = 1
    monkeypatch.setattr(stopping.STATE, "signum", signal.SIGTERM)
    gate.set()
    state = pipe.state_dict()
    assert not rollout_threads()
    assert state["ready"] is None and state["pending"]["version"] == 0
    assert state["pending"]["weights"]["w"].item() == 0.0
    monkeypatch.setattr(stopping.STATE, "signum", None)
    # resumed: a fresh engine, the policy as checkpointed (after the update)
    module2 = fake_module(PushEngine(), Versioned(1), gate=gate)
    module2.rl_step = 1
    resumed = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    resumed.bind(module2)
    resumed.load_state_dict(state, tasks)
    job = resumed.obtain(1, tasks(1))
    assert [t.reward for t in job.trajs] == [0.0] * 4  # made from the pushed version 0
    assert module2.policy.version == 1.0  # the trainer's weights put back after the push
    resumed.commit(job, tasks(2))  # the next rollout gets version 1
    module2.policy.version = 2
    fresh, _ = resumed.commit(resumed.obtain(2, tasks(2)), None)
    assert [t.reward for t in fresh] == [1.0] * 4
    # a batch that finished keeps no copy of the weights (nor does its checkpoint)
    pipe2 = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    pipe2.bind(fake_module(PushEngine(), Versioned(0)))
    pipe2.commit(pipe2.obtain(0, tasks(0)), tasks(1))
    pipe2.module.rl_step = 1
    assert pipe2.state_dict()["ready"]["weights"] is None


def test_a_batch_ready_at_a_checkpoint_round_trips():
    module = fake_module(PushEngine(), Versioned(0))
    pipe = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    pipe.bind(module)
    pipe.commit(pipe.obtain(0, tasks(0)), tasks(1))
    module.policy.version = 7  # updated after the snapshot: the ready batch keeps version 0
    module.rl_step = 1
    state = pipe.state_dict()
    other = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    other.bind(fake_module(PushEngine(), Versioned(7)))
    other.module.rl_step = 1
    other.load_state_dict(state, tasks)
    fresh, _ = other.commit(other.obtain(1, tasks(1)), None)
    assert [t.reward for t in fresh] == [0.0] * 4 and other.staleness == [1] * 4
    # a run whose data gives step 1 other tasks refuses the checkpoint's batch
    third = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    with pytest.raises(ValueError, match="other tasks than this run's data"):
        third.load_state_dict(state, lambda step: tasks(step + 5))


def scored_by_hand() -> ScoredBatch:
    # one episode, three generated tokens; old - behaviour = log 1, log 3, log 0.25
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    behaviour = torch.tensor([[-1.0, -2.0, -1.0]])
    old = behaviour + torch.log(torch.tensor([[1.0, 3.0, 0.25]]))
    ids = torch.ones((1, 4), dtype=torch.long)
    return ScoredBatch(TokenBatch(ids, torch.ones_like(ids), mask, behaviour), old=old)


@pytest.mark.parametrize("mode", ["tis", "mask"])
def test_importance_weight_statistics_and_masking_by_hand(mode):
    pipe = RolloutPipeline(max_staleness=1, max_reuse=1, correction=mode, correction_cap=2.0)
    scored = scored_by_hand()
    stats = pipe.correct(scored)
    # weights 1, 3, 0.25: mean 4.25 / 3; 3 > 2 and 0.25 < 1/2 are out of the cap
    assert stats["pipeline/is_weight_mean"] == pytest.approx(4.25 / 3)
    assert stats["pipeline/is_weight_max"] == pytest.approx(3.0)
    assert stats["pipeline/is_out_of_cap_frac"] == pytest.approx(2 / 3)
    if mode == "mask":
        assert stats["pipeline/masked_frac"] == pytest.approx(2 / 3)
        assert scored.batch.loss_mask.tolist() == [[1.0, 0.0, 0.0]]
    else:
        assert stats["pipeline/masked_frac"] == 0.0
        assert scored.batch.loss_mask.tolist() == [[1.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_staleness": 0}, "max_staleness must be >= 1"),
        ({"max_reuse": 0}, "max_reuse must be >= 1"),
        ({"correction": "clip"}, "correction must be one of"),
        ({"correction_cap": 1.0}, "correction_cap must be > 1"),
    ],
)
def test_bad_settings_are_one_line(kwargs, match):
    args = {"max_staleness": 1, "max_reuse": 1, "correction": "tis", "correction_cap": 2.0}
    with pytest.raises(ValueError, match=match):
        RolloutPipeline(**{**args, **kwargs})


def test_the_module_refuses_what_the_config_check_refuses():
    """A module built without the config check (agentrl/config_check.py says why, at launch)."""
    from agentrl.module import AgentRLModule

    module = SimpleNamespace(engine=SharedEngine(), algorithm=SimpleNamespace(tis_cap=None))
    with pytest.raises(ValueError, match=r"^rollout.pipeline=overlap needs an RL algorithm"):
        AgentRLModule._pipeline(module, "overlap", "preference", 1, 1, "tis", 2.0)
    # the same in the sync loop is fine; an engine with its own weights (vLLM) overlaps
    assert AgentRLModule._pipeline(module, "sync", "preference", 1, 1, "tis", 2.0) is None
    module.engine = PushEngine()
    assert isinstance(AgentRLModule._pipeline(module, "overlap", "rl", 1, 1, "tis", 2.0),
                      RolloutPipeline)  # fmt: skip


def test_the_module_refuses_a_sharded_policy(monkeypatch):
    """trainer=fsdp past the config check: refused as fit starts, before the thread copies it."""
    from agentrl import distributed as D
    from agentrl.module import AgentRLModule

    policy = torch.nn.Linear(2, 2)
    pipe = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    module = SimpleNamespace(policy=policy, critic=None, engine=SharedEngine(), pipeline=pipe)
    monkeypatch.setattr(D, "fsdp_modules", lambda model: [model])
    with pytest.raises(
        ValueError, match=r"^rollout.pipeline=overlap does not support trainer=fsdp \("
    ):
        AgentRLModule.on_fit_start(module)
    assert pipe.module is None and not rollout_threads()


def test_a_checkpoint_of_two_ranks_pipelines_refuses_one_process():
    """Each rank resumes its own pipeline: another number of processes is one line."""
    from agentrl.module import AgentRLModule
    from agentrl.rng import rng_state

    pipe = RolloutPipeline(max_staleness=1, max_reuse=1, correction="tis", correction_cap=2.0)
    module = SimpleNamespace(counters={}, _trainer=None, pipeline=pipe, global_rank=0)
    state = pipe.state_dict()
    ckpt = {"agentrl": {"rl_step": 2, "counters": {}, "rng": rng_state(), "pipeline": [state] * 2}}
    with pytest.raises(ValueError, match=r"^this overlap checkpoint holds 2 ranks' pipelines; it "
                       r"resumes with 2 processes, not 1$"):  # fmt: skip
        AgentRLModule.on_load_checkpoint(module, ckpt)
    ckpt["agentrl"]["pipeline"] = [state]
    AgentRLModule.on_load_checkpoint(module, ckpt)
    assert module.rl_step == 2


# ----------------------------------------------------------------------------- real runs
# tests/test_stopping.py's small settings: a 40-step warm start, 4 RL steps of 4 tasks,
# validation (and a checkpoint) every 2 steps
COMMON = ["rollout.pipeline=overlap", *ts.SMALL_RUN]
KEYS = (
    "rollout/reward_mean",
    "loss/policy",
    "val/success_rate",
    "pipeline/staleness_mean",
    "pipeline/is_weight_mean",
    "loss/tis_weight_mean",
)


def same_rows(got, want) -> None:
    from tests.test_train import rows_with

    for key in KEYS:
        g = [(r["train/rl_step"], r[key]) for r in rows_with(got, key)]
        w = [(r["train/rl_step"], r[key]) for r in rows_with(want, key)]
        assert [s for s, _ in g] == [s for s, _ in w], key
        assert [v for _, v in g] == pytest.approx([v for _, v in w], abs=1e-6), key


@pytest.mark.slow
def test_overlap_same_seed_same_metrics_and_resume_reproduces(make_cfg, tmp_path, monkeypatch):
    from omegaconf import open_dict

    from agentrl.train import run
    from tests.test_train import SimulatedCrash, metrics_rows, rows_with

    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    run(make_cfg(*COMMON, run="a"))
    assert not rollout_threads()
    a = metrics_rows(tmp_path / "a")
    staleness = [r["pipeline/staleness_mean"] for r in rows_with(a, "pipeline/staleness_mean")]
    assert staleness == [0.0, 1.0, 1.0, 1.0]
    assert any(r["rollout/reward_mean"] != 0 for r in rows_with(a, "rollout/reward_mean"))
    assert rows_with(a, "loss/policy"), "no update ran: the comparison would be trivial"
    # a validation after RL steps first waits for the rollout in flight, and is timed with it
    vals = rows_with(a, "perf/val_wait_s")
    assert len(vals) == len(rows_with(a, "val/success_rate"))
    assert all(0 <= r["perf/val_wait_s"] <= r["perf/val_s"] for r in vals)
    run(make_cfg(*COMMON, run="b"))
    same_rows(metrics_rows(tmp_path / "b"), a)
    # crashed before step 3 (checkpointed at the step-2 validation, with step 3's batch, made
    # from the weights before update 2), then resumed in place
    crashed = make_cfg(*COMMON, run="c")
    with open_dict(crashed):
        crashed.callbacks.crash = {"_target_": "tests.test_train.CrashAt", "step": 2}
    with pytest.raises(SimulatedCrash):
        run(crashed)
    assert not rollout_threads()
    ckpt = torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = ckpt["agentrl"]["pipeline"]
    assert state["ready"]["step"] == 2 and state["ready"]["version"] == 1
    run(make_cfg(*COMMON, run="c"))
    same_rows(metrics_rows(tmp_path / "c"), a)


@pytest.mark.slow
def test_overlap_sigterm_during_an_update_saves_and_the_rerun_matches(
    tmp_path, shared_cache, monkeypatch
):
    from tests.test_train import metrics_rows

    # tests/test_stopping.py's runs (launch.py in its own session), in overlap mode
    monkeypatch.setattr(ts, "COMMON", ["rollout.pipeline=overlap", *ts.COMMON])
    # the session's cache: the warm start is tests/test_stopping.py's (rollout.pipeline is no
    # part of its key), trained once
    cache = shared_cache
    rc, err, _ = ts.launch(tmp_path / "want", cache)
    assert rc == 0, err[-3000:]
    # SIGTERM as the update of RL step 3 starts: the rollout of step 4 is in flight
    rc, err, left = ts.launch(tmp_path / "run", cache, "update:3")
    assert rc == 143, err[-3000:]
    assert not left, f"processes left behind: {left}"
    state = stopped_pipeline(err, 3)
    # abandoned (saved with its snapshot's weights) or, had it finished first, ready
    saved = state["pending"] or state["ready"]
    assert (saved["step"], saved["version"]) == (3, 2)
    assert state["pending"] is None or state["pending"]["weights"]
    rc, err, left = ts.launch(tmp_path / "run", cache)
    assert rc == 0, err[-3000:]
    assert not left
    same_rows(metrics_rows(tmp_path / "run"), metrics_rows(tmp_path / "want"))


def stopped_pipeline(output: str, step: int) -> dict:
    """The pipeline state (one process) in the checkpoint of RL step ``step`` that a stopped
    run's one stop line in ``output`` names."""
    from agentrl.train import checkpoint_rl_step

    (line,) = ts.stop_lines(output)
    path = line.split(f"checkpoint of RL step {step}: ")[1].split(";")[0]
    assert checkpoint_rl_step(path) == step
    (state,) = torch.load(path, weights_only=True)["agentrl"]["pipeline"]
    return state


class SignalInFlight(L.Callback):
    """SIGTERM to rank ``rank`` as RL step ``step`` ends, with that rank's rollout of step
    ``step + 1`` surely in flight: the rollout waits for the signal before it samples (the
    timing is fixed, not a race), so it ends after the stop and is abandoned."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step
        self.sent = threading.Event()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank != self.rank or pl_module.rl_step != self.step - 1:
            return
        runner = pl_module.pipeline.runner  # the step's commit starts its next rollout with it

        def gated(*args, **kwargs):
            del runner.run  # the runner's own method again
            # a hang guard, not a synchronization: the signal is sent long before
            assert self.sent.wait(timeout=300), "the test's signal was never sent"
            return runner.run(*args, **kwargs)

        runner.run = gated

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == self.rank and pl_module.rl_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
            self.sent.set()


@pytest.mark.slow
def test_ddp_overlap_stopped_and_resumed_logs_what_the_uninterrupted_run_logs(tmp_path):
    """trainer=ddp (2 processes), each rank its own pipeline: SIGTERM to rank 1 as RL step 2
    ends, while its rollout of step 3 is in flight (abandoned: saved with its snapshot's
    weights); rank 0 sees no signal, finishes its own rollout (saved as ready) and stops with
    rank 1 at the validation. The rerun resumes both and logs what the uninterrupted DDP run
    logs."""
    from agentrl.train import checkpoint_rl_step
    from tests import test_distributed as td

    # test_distributed's settings (3 steps, a validation and checkpoint each step, a reward
    # that varies inside groups, so every update is real); its GroupSeededModule's own rollout
    # is not used by the pipeline: each rank samples its share with its own generator
    ddp = ["trainer=ddp", "rollout.pipeline=overlap"]
    cache = tmp_path / "cache"
    td.launch(tmp_path / "want", cache, *ddp)
    want = td.metrics_rows(tmp_path / "want")
    assert len(td.series(want, "loss/policy")) == 3
    run_dir = tmp_path / "run"
    signal_at = [
        "+callbacks.sigterm._target_=tests.test_pipeline.SignalInFlight",
        "+callbacks.sigterm.rank=1",
        "+callbacks.sigterm.step=2",
    ]
    proc = td.launch(run_dir, cache, *ddp, *signal_at, check=False)
    assert proc.returncode == 143, (proc.stdout + proc.stderr)[-5000:]
    path = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint_rl_step(path) == 2
    states = torch.load(path, weights_only=True)["agentrl"]["pipeline"]
    assert len(states) == 2, "one pipeline per rank"
    ready, pending = states[0]["ready"], states[1]["pending"]
    assert states[0]["pending"] is None and states[1]["ready"] is None
    assert (ready["step"], ready["version"]) == (pending["step"], pending["version"]) == (2, 1)
    assert ready["trajs"] and pending["trajs"] is None and pending["weights"]
    # each rank's share of the step's tasks
    assert len(ready["task_ids"]) == 2 and not set(ready["task_ids"]) & set(pending["task_ids"])
    td.launch(run_dir, cache, *ddp)
    assert "(RL step 2;" in (run_dir / "launch.log").read_text()
    got = td.metrics_rows(run_dir)
    for key in (*KEYS, "val/reward_mean"):
        g, w = td.series(got, key), td.series(want, key)
        assert [s for s, _ in g] == [s for s, _ in w], key
        assert [v for _, v in g] == pytest.approx([v for _, v in w], abs=1e-6), key


@pytest.mark.slow
def test_reused_samples_and_their_use_counts_survive_a_resume(make_cfg, tmp_path, monkeypatch):
    """max_reuse=2, max_staleness=2: the update of step k trains on batch k (version k-1) and
    on batch k-1 a second time (version k-2). The use counts are in the checkpoint: a resumed
    run that lost them would keep batch 1 for a third use (buffer/reuse_mean, stale_dropped)."""
    from omegaconf import open_dict

    from agentrl.train import run
    from tests.test_train import SimulatedCrash, metrics_rows, rows_with

    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    reuse = [*COMMON, "rollout.max_reuse=2", "rollout.max_staleness=2"]
    run(make_cfg(*reuse, run="a"))
    a = metrics_rows(tmp_path / "a")

    def per_step(rows, key):
        return [r[key] for r in rows_with(rows, key)]

    # batch 0 alone; batches 0 and 1 (both version 0); then each step one batch 1 version old
    # and one 2 versions old, each used a second time
    assert per_step(a, "pipeline/staleness_mean") == [0.0, 1.0, 1.5, 1.5]
    assert per_step(a, "pipeline/staleness_2_frac") == [0.0, 0.0, 0.5, 0.5]
    assert per_step(a, "buffer/reuse_mean") == [1.0, 1.5, 1.5, 1.5]
    n = per_step(a, "buffer/drained")[0]  # a batch: tasks x group size
    assert per_step(a, "buffer/drained") == [n, 2 * n, 2 * n, 2 * n]
    assert per_step(a, "buffer/stale_dropped") == [0.0] * 4
    assert rows_with(a, "loss/policy"), "no update ran: the comparison would be trivial"
    crashed = make_cfg(*reuse, run="c")
    with open_dict(crashed):
        crashed.callbacks.crash = {"_target_": "tests.test_train.CrashAt", "step": 2}
    with pytest.raises(SimulatedCrash):
        run(crashed)
    ckpt = torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = ckpt["agentrl"]["pipeline"]
    # batch 1 (added at step 1, version 0) used once, held for its second use
    assert {(s, u, v) for s, _, u, v in state["buffer"]["items"]} == {(1, 1, 0)}
    run(make_cfg(*reuse, run="c"))
    c = metrics_rows(tmp_path / "c")
    same_rows(c, a)
    for key in ("buffer/reuse_mean", "buffer/stale_dropped", "buffer/size", "buffer/drained"):
        assert per_step(c, key) == per_step(a, key), key
