"""The preference step: where pairs come from, bad input, and DPO / online DPO end to end."""

import csv
import json
import random
from types import SimpleNamespace

import pytest
import torch

from agentrl.algorithms.dpo import DPO
from agentrl.envs.toolcalc import ToolCalc
from agentrl.models.tokenizer import load_tiny_tokenizer
from agentrl.pairs import env_pairs, save_pairs
from agentrl.preference import _sample, collect_pairs
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.runner import EpisodeRunner
from agentrl.train import main, run
from tests.conftest import SHORT_WARMSTART_LR


@pytest.fixture(scope="module")
def runner():
    chat = ChatFormat(load_tiny_tokenizer())
    suite = ToolCalc(num_train=40, num_val=10, num_test=10, guess_prob=0.75, mistake_prob=0.05)
    return EpisodeRunner(None, chat, suite, max_seq_len=512)


def fake_module(runner, algo):
    return SimpleNamespace(
        algorithm=algo, runner=runner, suite=runner.suite, _trainer=None, global_rank=0, seed=0
    )


def test_env_source_pairs_each_task_and_is_seeded_by_step(runner):
    module = fake_module(runner, DPO(pairs="env"))
    tasks = runner.suite.tasks("train")[:6]
    pairs, sampled, stats = collect_pairs(module, tasks, step=3)
    assert sampled == [] and stats["pref/pairs"] == len(pairs) >= 5
    for p in pairs:
        good, bad = p.trajectories
        assert good.success and not bad.success and good.num_generated and bad.num_generated
    again, _, _ = collect_pairs(module, tasks, step=3)
    other, _, _ = collect_pairs(module, tasks, step=4)
    assert [p.rejected for p in again] == [p.rejected for p in pairs]
    assert [p.rejected for p in other] != [p.rejected for p in pairs]


def test_file_source_cycles_through_the_file_in_order(runner, tmp_path):
    suite = runner.suite
    pairs, _ = env_pairs(suite, runner, suite.tasks("train")[:5], random.Random(0))
    path = tmp_path / "pairs.jsonl"
    save_pairs(pairs, path)
    module = fake_module(runner, DPO(pairs="file", pairs_file=str(path)))
    tasks = suite.tasks("train")[:3]
    step0, _, stats = collect_pairs(module, tasks, step=0)
    step1, _, _ = collect_pairs(module, tasks, step=1)
    n = len(pairs)
    assert stats["pref/pairs"] == 3
    assert [p.rejected for p in step0 + step1] == [pairs[i % n].rejected for i in range(6)]
    # replayed from the file's actions, token-exact as the env pairs' own trajectories
    assert step0[0].trajectories[0].token_ids == pairs[0].trajectories[0].token_ids


def test_reference_source_samples_the_reference_and_rebinds_the_policy():
    bound = []
    policy, reference = object(), object()
    module = SimpleNamespace(
        reference=reference,
        policy=policy,
        tokenizer="tok",
        engine=SimpleNamespace(bind=lambda m, t: bound.append(m)),
    )
    module.rollout = lambda tasks, step: (bound[-1] is reference) and ["sampled"]
    assert _sample(module, ["t"], 0, from_reference=True) == ["sampled"]
    assert bound == [reference, policy]


def test_bad_pairs_file_is_one_line_and_exit_2(make_cfg, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task": {"id": "a", "prompt": "p"}, "chosen": ["x"], "rejected": "y"}\n')
    cfg = make_cfg("algorithm=dpo", "algorithm.pairs=file", f"algorithm.pairs_file={path}")
    with pytest.raises(SystemExit) as info:
        main(cfg)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{path}:1: rejected must be a non-empty list" in err


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]


def _policy_moved(run_dir) -> bool:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    ref = {k[len("reference.") :]: v for k, v in state.items() if k.startswith("reference.")}
    assert ref, "the frozen reference copy is part of the module"
    return any(not torch.equal(state[f"policy.{k}"], v) for k, v in ref.items())


@pytest.mark.slow
def test_dpo_two_steps_through_launch(make_cfg, tmp_path):
    run(make_cfg("algorithm=dpo", "debug=smoke", "data.tasks_per_step=4"))
    rows = _rows(tmp_path / "run")
    train = [r for r in rows if "pref/pairs" in r]
    assert len(train) == 2 and all(r["pref/pairs"] >= 3 for r in train)
    # step 0: the policy is the reference, so h = 0 and the loss is log 2
    assert train[0]["loss/policy"] == pytest.approx(0.6931, abs=1e-3)
    assert train[1]["pref/reward_margin"] > 0 and train[1]["loss/policy"] < train[0]["loss/policy"]
    assert _policy_moved(tmp_path / "run")
    sample = json.loads((tmp_path / "run" / "samples" / "train.jsonl").read_text().splitlines()[0])
    assert sample["turns"]


@pytest.mark.slow
def test_online_dpo_two_steps_through_launch(make_cfg, tmp_path):
    # a short warm start (the policy then writes actions) and shaping make the rewards of a
    # group differ, so there are pairs to rank
    cfg = make_cfg(
        "algorithm=online_dpo",
        "debug=smoke",
        "algorithm.group_size=4",
        "warmstart.steps=30",
        SHORT_WARMSTART_LR,
        "warmstart.num_demos=32",
        "warmstart.batch_size=8",
        "reward.step_penalty=0.05",
        "reward.invalid_penalty=0.1",
    )
    run(cfg)
    rows = _rows(tmp_path / "run")
    train = [r for r in rows if "pref/pairs" in r]
    assert len(train) == 2
    assert all(r["pref/pairs"] + r["pref/ties"] == 2 for r in train)
    assert sum(r["pref/pairs"] for r in train) >= 1
    assert all("env/success_rate" in r for r in train)
    assert _policy_moved(tmp_path / "run")
