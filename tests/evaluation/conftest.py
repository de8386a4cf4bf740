"""Fixtures of the evaluation tests: the composed evaluate config and small fake runs.

A fake run is what launch.py leaves behind, made in a second: ``.hydra/config.yaml`` (the real
composed train config, with a very small model) and Lightning-format checkpoints
(``state_dict`` with ``policy.*`` keys and the ``agentrl`` section) of perturbed weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from agentrl.utils.instantiate import instantiate
from tests.conftest import CONF, compose_config

# a ~20K-parameter model, so fake runs build and evaluate in a moment
SMALL_MODEL = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "model.intermediate_size=64",
]
# a short suite: 3 tasks of at most 3 turns of 8 tokens
SHORT_SUITE = [
    "num_tasks=3",
    "suites.toolcalc.max_turns=3",
    "suites.toolcalc.max_action_tokens=8",
    "suites.toolcalc.num_train=50",
    "suites.toolcalc.num_val=10",
    "suites.toolcalc.num_test=10",
    "bootstrap_samples=200",
    # one thread: on a busy 2-core machine more threads slow the model down many-fold
    "num_threads=1",
]


def compose_eval(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def eval_cfg():
    """eval_cfg(*overrides) -> the composed conf/evaluate.yaml, shortened by SHORT_SUITE."""

    def _make(*overrides: str, short: bool = True):
        return compose_eval([*(SHORT_SUITE if short else []), *overrides])

    return _make


def save_checkpoint(path: Path, model, rl_step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"policy.{k}": v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "agentrl": {"rl_step": rl_step}, "global_step": 0}, path)


def make_fake_run(root: Path, name: str, steps: dict[str, int], model_overrides=()) -> Path:
    """A run dir whose config has SMALL_MODEL; ``steps`` maps checkpoint stem -> RL step.
    ``model_overrides`` change the model the checkpoints are made from (not the config)."""
    cfg = compose_config(
        ["debug=smoke", "warmstart.enabled=false", *SMALL_MODEL], root / name, root / "cache"
    )
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    ckpt_cfg = compose_config(
        ["debug=smoke", *SMALL_MODEL, *model_overrides], root / name, root / "cache"
    )
    model, _ = instantiate(ckpt_cfg.model).load()
    gen = torch.Generator().manual_seed(len(name))
    for stem, step in steps.items():
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        save_checkpoint(run_dir / "checkpoints" / f"{stem}.ckpt", model, step)
    return run_dir


@pytest.fixture
def fake_run(tmp_path):
    """fake_run(name="run", steps={"step2": 2, "last": 4}, model_overrides=()) -> run dir."""

    def _make(name: str = "run", steps=None, model_overrides=()):
        steps = steps or {"step2": 2, "last": 4}
        return make_fake_run(tmp_path, name, steps, model_overrides)

    return _make
