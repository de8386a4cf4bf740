"""Shared fixtures: the real config, composed with Hydra's compose API and shrunk for tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_config(overrides: list[str], run_dir: Path, cache_dir: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.trainer.enable_progress_bar = False
        cfg.callbacks.rich_progress = None
        cfg.trainer.enable_model_summary = False
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides, run="run") -> a composed config writing under tmp_path."""

    def _make(*overrides: str, run: str = "run"):
        return compose_config(list(overrides), tmp_path / run, tmp_path / "cache")

    return _make
