"""env=external's entry-point mode: a pool of long-lived workers serving many rollouts, each
rollout with its own id, token, timeout and failure; nothing left behind."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.envs.external import ExternalAgent
from agentrl.envs.toolcalc import ToolCalc
from agentrl.gateway.server import Gateway
from agentrl.gateway.toolcalls import TagFormat
from agentrl.rollout.chat import ChatFormat
from tests.envs.leaks import no_leaks
from tests.gateway.conftest import RecordingEngine, ScriptedEngine
from tests.gateway.test_external import alive

ROOT = Path(__file__).resolve().parents[2]
STUB = "tests.gateway.stub_entry"


def make_suite(entry_point=None, command=None, **kw):
    return ExternalAgent(
        command=command,
        entry_point=entry_point,
        tasks=ToolCalc(num_train=20, num_val=5, num_test=5, max_ops=2),
        gateway=functools.partial(
            Gateway, tool_format=TagFormat("user", "<result>{content}</result>")
        ),
        cwd=str(ROOT),
        **kw,
    )


def runner_for(suite, tokenizer, replies=("<answer>4</answer>",)):
    engine = ScriptedEngine(tokenizer, list(replies))
    return suite.make_runner(engine, ChatFormat(tokenizer), max_seq_len=512)


def run(runner, tasks, generator=None):
    return runner.run(tasks, list(range(len(tasks))), runner.sampling(1.0, 1.0, False), generator)


def with_prompts(suite, *prompts):
    """Training tasks whose prompts name what stub_entry.by_task does with them."""
    tasks = suite.tasks("train")
    return [dataclasses.replace(t, prompt=p) for t, p in zip(tasks, prompts)]


def test_few_workers_serve_many_rollouts_each_its_own(tokenizer):
    """2 workers, 6 rollouts in 2 phases: the same 2 processes serve all of them; every
    rollout is merged, rewarded by what the function returned, under its own id."""
    with no_leaks():
        suite = make_suite(f"{STUB}:good", workers=2)
        try:
            pids = suite.pool.pids()
            runner = runner_for(suite, tokenizer)
            for _ in range(2):
                trajs = run(runner, suite.tasks("train")[:3])
                assert [t.status for t in trajs] == ["ok"] * 3
                assert [t.turns[-1].reward for t in trajs] == [1.0] * 3
                assert [t.group for t in trajs] == [0, 1, 2]
            m = runner.metrics()
            assert m["gateway/segments_per_rollout"] == 1.0 and m["gateway/rollouts_total"] == 6
            assert suite.pool.pids() == pids
        finally:
            suite.close()
        assert all(not alive(p) for p in pids)


def test_each_turn_of_the_running_rollouts_is_one_engine_call(tokenizer):
    """4 workers, 4 rollouts of two calls each, batches of up to 4 and a window far longer than
    the test: each turn of the 4 is generated in one engine call, served as soon as all 4 wait
    for the policy (as the in-process env generates a turn of its episodes), not at the window's
    end (that would time the rollouts out), nor split as requests arrive."""
    suite = make_suite(f"{STUB}:good", workers=4)
    try:
        suite.gateway_factory = functools.partial(
            Gateway,
            tool_format=TagFormat("user", "<result>{content}</result>"),
            max_batch_size=4,
            batch_window_s=600,
        )
        runner = runner_for(suite, tokenizer)
        trajs = run(runner, suite.tasks("train")[:4])
        assert [t.status for t in trajs] == ["ok"] * 4, [t.error for t in trajs]
        assert runner.engine.batches == [4, 4]
        assert runner.metrics()["gateway/segments_per_rollout"] == 1.0
    finally:
        suite.close()


def test_a_reward_posted_to_the_route_counts_as_in_subprocess_mode(tokenizer):
    suite = make_suite(f"{STUB}:report", workers=1)
    try:
        runner = runner_for(suite, tokenizer)
        trajs = run(runner, suite.tasks("train")[:2])
        assert [(t.status, t.turns[-1].reward) for t in trajs] == [("ok", 0.5), ("ok", 0.5)]
    finally:
        suite.close()


def test_a_raising_entry_point_fails_only_its_rollout(tokenizer):
    """One worker: the rollout whose function raises fails with the traceback's last line; the
    same worker then serves the next rollout."""
    suite = make_suite(f"{STUB}:by_task", workers=1)
    try:
        pids = suite.pool.pids()
        runner = runner_for(suite, tokenizer)
        tasks = with_prompts(suite, "boom", "fine")
        trajs = run(runner, tasks)
        (bad,) = [t for t in trajs if t.group == 0]
        (good,) = [t for t in trajs if t.group == 1]
        assert bad.status == "failed"
        assert bad.error.startswith(f"agent: raised ValueError: boom in {tasks[0].id}")
        assert "stub_entry.py:" in bad.error
        assert good.status == "ok" and good.turns[-1].reward == 1.0
        assert runner.metrics()["gateway/crashes"] == 1
        assert suite.pool.pids() == pids
    finally:
        suite.close()


def test_a_hung_rollout_is_killed_and_its_worker_replaced(tokenizer, tmp_path, monkeypatch):
    """One worker, timeout 5 s: the hung rollout's worker (and the grandchild it started) is
    killed, the rollout fails as timed out, a fresh worker serves the next rollout; after
    close nothing is left."""
    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv("AGENTRL_TEST_PIDFILE", str(pidfile))
    with no_leaks():
        suite = make_suite(f"{STUB}:by_task", workers=1, timeout_s=5.0)
        try:
            (first,) = suite.pool.pids()
            runner = runner_for(suite, tokenizer)
            trajs = run(runner, with_prompts(suite, "hang", "fine"))
            status = {t.group: (t.status, t.error) for t in trajs}
            assert status[0] == ("failed", "agent: timed out after 5s")
            assert status[1] == ("ok", None)
            m = runner.metrics()
            assert m["gateway/timeouts"] == 1 and m["gateway/crashes"] == 0
            (second,) = suite.pool.pids()
            assert second != first and not alive(first)
            assert not alive(int(pidfile.read_text()))
        finally:
            suite.close()


def test_a_returned_non_number_is_a_refused_reward(tokenizer):
    suite = make_suite(f"{STUB}:bad", workers=1)
    try:
        runner = runner_for(suite, tokenizer)
        (traj,) = run(runner, suite.tasks("train")[:1])
        assert traj.status == "failed" and "returned '1.0', not a reward" in traj.error
        assert runner.metrics()["gateway/bad_rewards"] == 1
    finally:
        suite.close()


@pytest.mark.parametrize(
    ("entry_point", "why"),
    [
        ("no_such_pkg.agent:run", "ModuleNotFoundError: No module named 'no_such_pkg'"),
        (f"{STUB}:missing", "AttributeError: module 'tests.gateway.stub_entry' has no attribute"),
        (f"{STUB}:json", "TypeError: json is a module, not a function"),
    ],
)
def test_an_entry_point_that_does_not_load_is_one_error_and_leaves_nothing(entry_point, why):
    with no_leaks(), pytest.raises(ValueError) as info:
        make_suite(entry_point, workers=2)
    msg = str(info.value)
    assert msg.startswith(f"env.entry_point {entry_point!r} does not load: {why}")
    assert "\n" not in msg


def test_a_malformed_entry_point_is_refused_before_any_worker_starts():
    with pytest.raises(ValueError, match="must be 'module:function'"):
        make_suite("examples/openai_agent/agent.py")
    with pytest.raises(ValueError, match="env.workers must be >= 1"):
        make_suite(f"{STUB}:good", workers=0)


def test_cli_entry_point_that_does_not_import_is_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "launch.py",
            "experiment=openai_agent",
            "env.entry_point=no_such_pkg.agent:run",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: env: env.entry_point 'no_such_pkg.agent:run' does not load: "
        "ModuleNotFoundError: No module named 'no_such_pkg'"
    )


def test_the_example_agent_gives_the_same_rollouts_in_both_modes(tiny, tokenizer):
    """examples/openai_agent/agent.py as a program per rollout and as the entry point ``run``,
    the tiny model sampling with the same seed: the same tokens, logprobs and rewards."""
    import torch

    model, _ = tiny

    def sample(suite):
        try:
            runner = runner_for(suite, tokenizer)
            runner.engine = RecordingEngine()
            runner.engine.bind(model, tokenizer)
            tasks = [t for t in suite.tasks("train")[:2] for _ in range(2)]
            trajs = run(runner, tasks, torch.Generator().manual_seed(0))
            return [(t.status, t.token_ids, t.logprobs, t.turns[-1].reward) for t in trajs]
        finally:
            suite.close()

    programs = sample(make_suite(command="python examples/openai_agent/agent.py", timeout_s=120))
    workers = sample(make_suite("examples.openai_agent.agent:run", workers=2, timeout_s=120))
    assert {s for s, *_ in programs} == {"ok"}
    assert workers == programs


@pytest.mark.slow
def test_worker_mode_trains_like_subprocess_mode(make_cfg, tmp_path):
    """`experiment=openai_agent debug=smoke` (2 RL steps, 4 tasks x 4 samples, the smoke warm
    start) with the example agent as a program per rollout, then as the entry point in 4
    workers, same seed: every logged metric but the timings (perf/) is the same. The smoke
    policy rarely solves a task, so the rewards compared are mostly 0; the tokens, log-probs,
    losses and gateway counts compared are the policy's own."""
    import csv

    from omegaconf import open_dict

    from agentrl.train import run as train

    common = [
        "experiment=openai_agent",
        "debug=smoke",
        "data.tasks_per_step=4",
        "algorithm.group_size=4",
        "callbacks.export=null",
        "env.timeout_s=600",
    ]

    def rows(run):
        with open(tmp_path / run / "metrics.csv") as f:
            return [
                {k: v for k, v in r.items() if v and not k.startswith("perf/")}
                for r in csv.DictReader(f)
            ]

    cfg = make_cfg(*common, run="programs")
    with open_dict(cfg):
        cfg.env.command = f"{sys.executable} examples/openai_agent/agent.py"
    train(cfg)
    workers_cfg = make_cfg(
        *common, "env.entry_point=examples.openai_agent.agent:run", "env.workers=4", run="workers"
    )
    with no_leaks():
        train(workers_cfg)
    programs, workers = rows("programs"), rows("workers")
    steps = [r for r in workers if r.get("gateway/rollouts")]
    assert len(steps) == 2 and all(float(r["gateway/rollouts"]) == 16 for r in steps)
    assert all(float(r["rollout/failed_episodes"]) == 0 for r in steps)
    assert any(r.get("val/success_rate") for r in workers)
    assert len(workers) == len(programs)
    for w, p in zip(workers, programs):
        differ = {k: (w.get(k), p.get(k)) for k in set(w) | set(p) if w.get(k) != p.get(k)}
        assert not differ, differ


def test_a_stop_abandons_the_rollout_kills_its_worker_and_the_next_run_has_fresh_ones(
    tokenizer, tmp_path, monkeypatch, caplog
):
    """The overlap pipeline's cancel (a stop signal does the same) during a hung rollout: the
    run returns at once with nothing, the worker running it is killed with its grandchild, the
    rollout not sent never runs; the next run tops the pool up and serves normally."""
    import threading

    from tests.gateway.test_external import stop_when_started

    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv("AGENTRL_TEST_PIDFILE", str(pidfile))
    with no_leaks():
        suite = make_suite(f"{STUB}:by_task", workers=1, timeout_s=60.0)
        try:
            (first,) = suite.pool.pids()
            runner = runner_for(suite, tokenizer)
            runner.cancel = threading.Event()
            watcher = stop_when_started(pidfile, runner.cancel.set)
            with caplog.at_level("INFO", logger="agentrl.envs.external.suite"):
                assert run(runner, with_prompts(suite, "hang", "fine")) == []
            watcher.join()
            assert "1 agent programs killed, 1 not started" in caplog.text
            assert not alive(first) and not alive(int(pidfile.read_text()))
            runner.cancel.clear()
            trajs = run(runner, with_prompts(suite, "fine"))
            assert [t.status for t in trajs] == ["ok"]
            (second,) = suite.pool.pids()
            assert second != first
        finally:
            suite.close()
