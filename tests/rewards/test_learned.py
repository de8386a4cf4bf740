"""The learned reward: Bradley-Terry by hand, a reward model that learns a separable preference
set, the hacking monitor, training from env pairs with a cache, a user's pairs file."""

from __future__ import annotations

import json
import math
import random

import lightning as L
import pytest
import torch

from agentrl.envs.toolcalc import ToolCalc
from agentrl.models.factory import TinyModel
from agentrl.pairs import PERTURBATIONS
from agentrl.rewards import training
from agentrl.rewards.base import score_batch
from agentrl.rewards.learned import (
    LearnedReward,
    RewardModel,
    RewardModelModule,
    bradley_terry_loss,
    pairwise_accuracy,
    pearson,
    success_auc,
)
from agentrl.types import Task, Trajectory, Turn


def test_bradley_terry_by_hand():
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 1.0])
    loss = bradley_terry_loss(chosen, rejected)
    # pair 1: d = 2, -log sigmoid(2) = log(1 + e^-2) = 0.126928
    # pair 2: d = -1, -log sigmoid(-1) = log(1 + e^1) = 1.313262; mean 0.720095
    assert float(loss) == pytest.approx(0.720095, abs=1e-6)
    loss.backward()
    # d loss / d chosen_i = -(1 - sigmoid(d_i)) / 2: -(0.119203)/2, -(0.731059)/2
    assert chosen.grad.tolist() == pytest.approx([-0.0596015, -0.3655293], abs=1e-6)
    # centring: + 0.1 * mean((2+0)^2, (0+1)^2) = 0.1 * 2.5
    centred = bradley_terry_loss(chosen.detach(), rejected, center_coef=0.1)
    assert float(centred) == pytest.approx(0.970095, abs=1e-6)
    # shift invariance of the plain loss
    assert float(bradley_terry_loss(chosen + 5, rejected + 5)) == pytest.approx(float(loss))


def test_metrics_by_hand():
    assert pairwise_accuracy([1.0, 0.0, 2.0], [0.0, 1.0, 2.0]) == pytest.approx(0.5)
    # successes 3, 1 vs failures 2, 0: pairs (3>2, 3>0, 1<2, 1>0) -> 3/4
    assert success_auc([3, 1, 2, 0], [True, True, False, False]) == 0.75
    assert math.isnan(success_auc([1, 2], [True, True]))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def tiny_backbone(seed=0):
    return TinyModel(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=seed
    )


def test_reward_model_learns_a_separable_preference_set():
    """Chosen sequences contain token 7 somewhere, rejected ones token 9 instead (random
    positions, random filler): a held-out set is ranked correctly after a short training."""
    # the reward head's initialization draws from torch's global generator: seeded here, or the
    # test's outcome would depend on the tests run before it in this process
    torch.manual_seed(0)
    net, tok = tiny_backbone().load()
    model = RewardModel(net)
    gen = random.Random(0)

    def seq(marker):
        n = gen.randint(6, 14)
        ids = [gen.randint(20, 200) for _ in range(n)]
        ids[gen.randrange(n)] = marker
        return ids

    items = [(seq(7), seq(9), 1.0, 0.0) for _ in range(300)]
    train, held = items[:240], items[240:]
    pad = tok.pad_token_id
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=32,
        shuffle=True,
        collate_fn=lambda b: training.pad_pairs(b, pad),
        generator=torch.Generator().manual_seed(0),
    )
    module = RewardModelModule(model, 3e-3, 0.0, steps=60, warmup_steps=5, center_coef=0.0)
    before = _accuracy(model, held, pad)
    torch.manual_seed(0)
    L.Trainer(
        max_steps=60,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module, loader)
    after = _accuracy(model, held, pad)
    assert before < 0.9 and after >= 0.95, (before, after)


def _accuracy(model, items, pad):
    c_ids, c_mask, r_ids, r_mask, _, _ = training.pad_pairs(items, pad)
    model.eval()
    with torch.no_grad():
        return pairwise_accuracy(model(c_ids, c_mask).tolist(), model(r_ids, r_mask).tolist())


def episode(success: bool, action: str) -> Trajectory:
    return Trajectory(
        task=Task("t", "Compute 2*3", 6),
        token_ids=[1],
        loss_mask=[0],
        logprobs=[0.0],
        prompt_len=1,
        turns=[Turn(action, "", float(success), (0, 1), {})],
        success=success,
    )


def small_settings(**kw):
    s = {
        "sources": {"env": {"num_tasks": 60}},
        "val_tasks": 20,
        "steps": 15,
        "batch_size": 8,
        "val_every": 15,
        "seed": 0,
    }
    return {**s, **kw}


def fake_cfg(tmp_path):
    env = {"_target_": "agentrl.envs.toolcalc.ToolCalc", "num_train": 100, "num_val": 30}
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "env": env,
            "paths": {"output_dir": str(tmp_path / "run")},
            "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
            "callbacks": {},
        }
    )


def test_reward_model_stage_trains_caches_and_reuses(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO")
    suite = ToolCalc(num_train=100, num_val=30, num_test=10, max_ops=2, guess_prob=0.0)
    cfg = fake_cfg(tmp_path)
    r = LearnedReward(tiny_backbone(), training=small_settings(), cache_dir=str(tmp_path / "rm"))
    training.reward_model_stage(cfg, r, suite)
    assert "training one" in caplog.text
    folders = list((tmp_path / "rm").iterdir())
    assert len(folders) == 1 and (folders[0] / "model.pt").is_file()
    info = json.loads((folders[0] / "info.json").read_text())
    assert info["train_pairs"] > 30 and info["val_pairs"] > 10
    assert 0.0 <= info["val_accuracy"] <= 1.0
    by_kind = info["val_accuracy_by_kind"]
    assert set(by_kind) <= set(PERTURBATIONS)
    assert sum(v["pairs"] for v in by_kind.values()) == info["val_pairs"]
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in by_kind.values())
    assert "held-out accuracy by kind" in caplog.text
    assert (tmp_path / "run" / "reward_model" / "metrics.csv").is_file()
    trajs = [episode(True, "<answer>6</answer>"), episode(False, "<answer>7</answer>")]
    counts = score_batch(r, trajs)
    assert counts["reward_errors"] == 0 and "reward/rm_success_auc" in r.metrics()
    assert trajs[0].reward_components["learned"] == trajs[0].reward

    def boom(*a, **k):
        raise AssertionError("retrained although a cached model exists")

    monkeypatch.setattr(training, "train", boom)
    again = LearnedReward(
        tiny_backbone(), training=small_settings(), cache_dir=str(tmp_path / "rm")
    )
    training.reward_model_stage(cfg, again, suite)
    assert "reusing the cached" in caplog.text
    again_trajs = [episode(True, "<answer>6</answer>"), episode(False, "<answer>7</answer>")]
    score_batch(again, again_trajs)
    assert [t.reward for t in again_trajs] == pytest.approx([t.reward for t in trajs])
    # other settings, another cache entry (training is needed again)
    other = LearnedReward(
        tiny_backbone(), training=small_settings(steps=16), cache_dir=str(tmp_path / "rm")
    )
    with pytest.raises(AssertionError, match="retrained"):
        training.reward_model_stage(cfg, other, suite)


def test_pairs_file_source_and_bad_file(tmp_path):
    suite = ToolCalc(num_train=100, num_val=30, num_test=10, max_ops=2)
    task = suite.tasks("train")[0]
    steps = task.meta["steps"]
    good = [f"<calc>{s['a']}{s['op']}{s['b']}</calc>" for s in steps] + [
        f"<answer>{task.answer}</answer>"
    ]
    rec = {
        "task": {"id": task.id, "prompt": task.prompt, "answer": task.answer, "meta": task.meta},
        "chosen": good,
        "rejected": [f"<answer>{task.answer + 1}</answer>"],
    }
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(rec) for _ in range(10)) + "\n")
    r = LearnedReward(tiny_backbone(), cache_dir=str(tmp_path / "rm"))
    r.build()
    s = training._settings(small_settings(sources={"file": {"path": str(path)}}))
    _, train, val, counts = training.collect_pairs(r, None, suite, s)
    assert counts == {"file": 10} and len(train) == 9 and len(val) == 1
    path.write_text('{"task": {"id": "x", "prompt": "p"}, "chosen": [1], "rejected": ["a"]}\n')
    from agentrl.utils.instantiate import ConfigError

    with pytest.raises(ConfigError, match="pairs.jsonl:1"):
        training.collect_pairs(r, None, suite, s)


def test_long_episodes_keep_the_task_and_the_end():
    from agentrl.models.tokenizer import load_tiny_tokenizer
    from agentrl.rewards.learned import EpisodeEncoder

    enc = EpisodeEncoder(load_tiny_tokenizer(), max_len=64)
    task = Task("t", "Buy the red hat, size M", None)
    turns = [Turn(f"click [{i}]", "page " * 10, 0.0, (0, 1), {}) for i in range(20)]
    ids = enc.ids(task, turns)
    full_head = enc.chat.prompt_ids(None, task.prompt)
    last = enc.chat.action_ids("click [19]") + enc.chat.observation_ids("page " * 10)
    assert len(ids) == 64
    assert ids[: len(full_head)] == full_head  # the goal stays visible
    assert ids[-len(last) :] == last  # and so does the outcome
    short = enc.ids(task, turns[:1])
    assert len(short) < 64 and short[: len(full_head)] == full_head


def generated_tokens(task, trajectory) -> float:
    """A ranking reward that separates even a barely trained policy's episodes."""
    return float(trajectory.num_generated)


def test_rollout_pairs_ranked_by_another_reward(make_cfg, monkeypatch):
    from agentrl.train import build_components

    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    cfg = make_cfg("debug=smoke", "reward=learned")
    parts = build_components(cfg)
    r = parts["reward"]
    r.build()
    ranker = {"_target_": "tests.rewards.test_learned.generated_tokens", "_partial_": True}
    src = {"rollouts": {"num_tasks": 4, "group_size": 4, "ranker": ranker}}
    s = training._settings(small_settings(sources=src, val_fraction=0.0))
    _, train, val, counts = training.collect_pairs(r, cfg, parts["suite"], s)
    assert counts["rollouts"] == len(train) >= 1 and val == []
    for pair in train:
        assert pair.meta["source"] == "ranked"
        assert pair.meta["chosen_score"] > pair.meta["rejected_score"]


def test_a_warm_started_reward_models_key_is_the_warm_starts_own(make_cfg):
    """``init: warmstart``: the reward model's cache key holds the warm start's cache key, so it
    changes with what the backbone starts from (the observation role, the warm start being off)
    and not with where the warm start is kept."""
    from agentrl.utils.instantiate import instantiate

    cfg = make_cfg("reward=learned", "reward.init=warmstart")
    reward = instantiate(cfg.reward)
    key = reward.identity(cfg)
    cfg.warmstart.cache_dir = "/elsewhere/warmstart"
    assert reward.identity(cfg) == key
    cfg.rollout.observation_role = "tool"
    assert reward.identity(cfg) != key
    cfg.rollout.observation_role = "user"
    cfg.warmstart.enabled = False
    assert reward.identity(cfg)["warmstart"] is None
