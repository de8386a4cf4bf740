"""codegen inside the loop: token-exact episodes through the runner, sandbox failures counted
as env/ metrics while the batch goes on, and a short end-to-end run of the training loop."""

from __future__ import annotations

import csv
import os
from collections import Counter
from types import SimpleNamespace

import psutil
import pytest
from omegaconf import open_dict

from agentrl.envs.codegen.suite import CodeGen, code_action
from agentrl.envs.codegen.tasks import program_code
from agentrl.envs.sandbox import Sandbox
from agentrl.models.tokenizer import load_tiny_tokenizer
from agentrl.rewards.base import as_reward, score_batch
from agentrl.rewards.env_return import EnvReturn
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.runner import EpisodeRunner
from agentrl.step_metrics import train_metrics
from agentrl.train import run
from tests.rollout.test_runner import ScriptedEngine

SMALL = {"num_train": 50, "num_val": 10, "num_test": 10, "sources": ["procedural"]}


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(load_tiny_tokenizer())


def rollout(chat, suite, task, actions):
    runner = EpisodeRunner(ScriptedEngine(chat, actions), chat, suite, max_seq_len=1024)
    return runner.run([task], [0], runner.sampling(1.0, 1.0, False))[0]


def test_a_revised_episode_is_token_exact_and_rewarded(chat, tmp_path):
    suite = CodeGen(seed=0, sandbox=Sandbox(base_dir=str(tmp_path)), **SMALL)
    task = next(t for t in suite.tasks("train") if t.meta["needs_parens"])
    wrong = code_action(program_code([tuple(s) for s in task.meta["steps"]], parens=False))
    traj = rollout(chat, suite, task, [wrong, code_action(task.meta["solution"])])
    assert traj.status == "ok" and traj.success is True and len(traj.turns) == 2
    assert traj.turns[0].observation.startswith("passed ")
    score_batch(EnvReturn(), [traj])
    assert traj.reward == pytest.approx(1.0 + suite.all_pass_bonus)
    generated = sum(traj.loss_mask)
    expected = sum(len(chat.action_ids(a)) for a in (t.action for t in traj.turns))
    assert generated == expected


def test_sandbox_failures_are_counted_and_the_batch_goes_on(chat, tmp_path):
    broken = Sandbox(python=str(tmp_path / "no-python"), wall_seconds=2, base_dir=str(tmp_path))
    suite = CodeGen(seed=0, sandbox=broken, **SMALL)
    tasks = suite.tasks("train")[:2]
    trajs = [rollout(chat, suite, t, [code_action(t.meta["solution"])]) for t in tasks]
    # every attempt fails: the turn cap ends the episode as truncated, as in every env
    assert all(t.status == "truncated" and t.success is False for t in trajs)
    assert all(len(t.turns) == suite.max_turns for t in trajs)
    score_batch(EnvReturn(), trajs)
    host = SimpleNamespace(
        counters=Counter(failed_episodes=0, skipped_updates=0),
        rl_step=0,
        suite=suite,
        reward=as_reward(EnvReturn()),
        runner=EpisodeRunner(None, chat, suite, 512),
    )
    counts = {"reward_errors": 0, "reward_nonfinite": 0}
    m = train_metrics(host, trajs, counts, {})
    runs = 2 * suite.max_turns  # failed runs are never cached
    assert m["env/sandbox_runs"] == m["env/sandbox_failures"] == runs
    assert m["rollout/failed_episodes"] == 0.0 and m["env/success_rate"] == 0.0


@pytest.mark.slow
def test_two_rl_steps_through_the_training_loop(make_cfg, tmp_path):
    cfg = make_cfg("experiment=codegen_grpo", "debug=smoke")
    base = tmp_path / "sandbox"
    base.mkdir()
    with open_dict(cfg):
        cfg.env.num_train, cfg.env.num_val, cfg.env.num_test = 100, 20, 20
        cfg.env.sandbox.base_dir = str(base)
    run(cfg)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [r for r in rows if r.get("train/rl_step") and r.get("env/success_rate")]
    assert len(steps) == 2
    assert any(r.get("val/success_rate") for r in rows)
    assert os.listdir(base) == []
    assert psutil.Process().children(recursive=True) == []
