"""Every option of every config group composes and instantiates; bad values fail early."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from agentrl import config_check
from agentrl.models.factory import ModelLoadError
from agentrl.rollout.vllm_engine import vllm_available
from agentrl.train import build_components, build_trainer
from agentrl.utils.instantiate import ConfigError, instantiate
from tests.conftest import CONF, ROOT

GROUPS = [
    "model",
    "adapter",
    "env",
    "reward",
    "algorithm",
    "rollout",
    "module",
    "trainer",
    "logger",
    "callbacks",
]
HUB_MODELS = {
    "qwen2_5_0_5b_instruct",
    "llama3_2_1b_instruct",
    "mistral_7b_instruct",
    "deepseek_r1_distill_qwen_1_5b",
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(make_cfg, group, option, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_cfg(f"{group}={option}", "debug=smoke")
    OmegaConf.resolve(cfg)
    node = cfg[group]
    if group in ("logger", "callbacks"):
        objs = [instantiate(c, f"{group}.{k}") for k, c in node.items() if c]
        assert objs
    elif group == "adapter":
        assert "enabled" in node
    elif group == "rollout":
        if option == "vllm" and not vllm_available():
            with pytest.raises(ConfigError, match="make setup-vllm"):
                instantiate(node.engine, "rollout.engine")
        else:
            assert instantiate(node.engine).name == option
    elif group == "trainer":
        if node.accelerator == "gpu" and not torch.cuda.is_available():
            # composed above; Lightning refuses a GPU accelerator on a machine without one
            assert node.precision == "bf16-mixed" and node.strategy.process_group_backend == "nccl"
            pytest.skip("a GPU trainer option: instantiated where CUDA is available")
        assert build_trainer(cfg).max_epochs == 1
    elif group == "module":
        assert callable(instantiate(node))
    else:
        spec = instantiate(node, group)
        assert spec is not None
        if group == "model" and option in HUB_MODELS:
            with pytest.raises(ModelLoadError, match="not .*cache|offline|HF_HUB_OFFLINE"):
                spec.check()


def _leaves(node, prefix: str = "") -> dict:
    """{dotted path: value} of every leaf of a plain container (interpolations unresolved)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: node}


@pytest.mark.parametrize(
    ("group", "name"), [(g, n) for g in ("experiment", "debug") for n in options(g)]
)
def test_experiments_and_debug_options_compose(make_cfg, group, name):
    """Each experiment and debug option composes into the run it describes: the groups its
    defaults list overrides are the ones selected, and every value it sets is the composed
    config's value at that path (nothing later in the defaults list undoes it)."""
    raw = OmegaConf.load(CONF / group / f"{name}.yaml")
    cfg = make_cfg(f"{group}={name}")
    for entry in raw.get("defaults", []):
        if isinstance(entry, str):
            continue  # _self_, or another option of the group it builds on (tested on its own)
        for key, option in entry.items():
            chosen = key.removeprefix("override /")
            if chosen.startswith("recipe"):
                # a recipe (`# @package _global_`): its values hold where the option sets none
                recipe = (
                    OmegaConf.create()
                    if option is None
                    else OmegaConf.load(CONF / chosen / f"{option}.yaml")
                )
                composed = _leaves(OmegaConf.to_container(cfg))
                for path, value in _leaves(OmegaConf.to_container(recipe)).items():
                    if path not in _leaves(OmegaConf.to_container(raw)):
                        assert composed.get(path) == value, f"{key}: {option}: {path}"
                continue
            picked = OmegaConf.to_container(OmegaConf.load(CONF / chosen / f"{option}.yaml"))
            picked.pop("defaults", None)  # an option built on another (trainer=ddp_gpu on ddp)
            if "_target_" in picked:
                assert cfg[chosen]._target_ == picked["_target_"], f"{key}: {option}"
            else:  # a group without a target (adapter): its values, where the option keeps them
                mine = _leaves(OmegaConf.to_container(cfg[chosen]))
                for path in _leaves(picked):
                    assert path in mine, f"{key}: {option}: {path}"
    body = {k: v for k, v in OmegaConf.to_container(raw).items() if k not in ("defaults", "hydra")}
    assert body or raw.get("defaults"), f"{group}={name} sets nothing"
    composed = _leaves(OmegaConf.to_container(cfg))
    for path, value in _leaves(body).items():
        if path.startswith("paths.") or path in ("trainer.enable_progress_bar",):
            continue  # the test fixture points these at its temporary folders
        assert path in composed and composed[path] == value, f"{group}={name}: {path}"


def _targets(node, prefix: str = "") -> dict[str, str]:
    """{path of a node: its ``_target_``} for every node of a plain container below ``prefix``."""
    if not isinstance(node, dict):
        return {}
    out = {prefix: node["_target_"]} if "_target_" in node else {}
    for k, v in node.items():
        out.update(_targets(v, f"{prefix}.{k}"))
    return out


MODE_GROUPS = ("env", "algorithm", "reward", "rollout")


@pytest.mark.parametrize(
    ("mode", "group", "option"),
    [(m, g, o) for m in options("mode") for g in MODE_GROUPS for o in options(g)],
)
def test_mode_composes_with_every_option(make_cfg, mode, group, option):
    """``mode=<mode> <group>=<option>`` composes (recipes included) into a config that passes
    the checks of agentrl/config_check.py: the mode is the one named, the option named is the
    one selected (its targets in place, whatever the mode's defaults list overrides), and a
    group the mode overrides (mode=reward_model: reward=learned) keeps the mode's option unless
    it is the group named."""
    raw = OmegaConf.load(CONF / "mode" / f"{mode}.yaml")
    overrides = {
        k.removeprefix("override /"): v
        for entry in raw.get("defaults", [])
        if not isinstance(entry, str)
        for k, v in entry.items()
    }
    cfg = make_cfg(f"mode={mode}", f"{group}={option}")
    assert cfg.mode == raw.mode == mode
    chosen = {group: option, **{g: o for g, o in overrides.items() if g != group}}
    for g, o in chosen.items():
        # the option's own targets (the group's, or its engine's): a recipe may change deeper ones
        want = _targets(OmegaConf.to_container(OmegaConf.load(CONF / g / f"{o}.yaml")), g)
        top = min(p.count(".") for p in want)
        want = {p: t for p, t in want.items() if p.count(".") == top}
        got = _targets(OmegaConf.to_container(cfg[g]), g)
        assert {p: got.get(p) for p in want} == want, f"{g}={o}"
    if mode == "reward_model" and group != "reward":
        assert cfg.reward._target_ == "agentrl.rewards.learned.LearnedReward"
    config_check.validate(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm.group_size=1", "group_size must be >= 2"),
        ("optimizer.lr=0", "optimizer.lr must be > 0"),
        ("optimizer.lr=-1e-3", "optimizer.lr must be > 0"),
        ("data.tasks_per_step=0", "data.tasks_per_step must be >= 1"),
        ("env.max_turns=0", "max_turns must be >= 1"),
        ("warmstart.steps=0", "warmstart.steps must be >= 1"),
        ("rollout.engine.micro_batch_size=0", "micro_batch_size must be >= 1"),
        ("data.steps=5", "trainer.val_check_interval=10 is more than data.steps=5"),
    ],
)
def test_bad_values_fail_before_compute(make_cfg, override, message):
    cfg = make_cfg(override)
    with pytest.raises((ConfigError, ValueError, TypeError)) as err:
        build_components(cfg)
    if message:
        assert message in str(err.value)
        assert "\n" not in str(err.value)


def test_missing_model_path_is_one_clear_line(make_cfg):
    cfg = make_cfg("model=qwen2_5_0_5b_instruct", "model.name_or_path=/does/not/exist")
    with pytest.raises(ModelLoadError) as err:
        build_components(cfg)
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)


def test_target_outside_allow_list_is_refused(make_cfg):
    cfg = make_cfg()
    cfg.reward._target_ = "os.system"
    with pytest.raises(ConfigError, match="not an allowed target"):
        build_components(cfg)


def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch.py", *args, "hydra.run.dir=/tmp/agentrl-test-bad-input"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


def test_cli_bad_value_exits_nonzero_with_one_message():
    proc = _launch("algorithm.group_size=1")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: algorithm: algorithm.group_size must be >= 2")
    )
    assert "Traceback" not in proc.stderr


def test_cli_offline_hub_model_is_one_line():
    proc = _launch("model=qwen2_5_0_5b_instruct")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "Qwen/Qwen2.5-0.5B-Instruct" in last and "Traceback" not in proc.stderr


def test_cli_unknown_group_option_lists_choices():
    proc = _launch("env=nope")
    assert proc.returncode != 0
    assert "Could not find 'env/nope'" in proc.stderr and "toolcalc" in proc.stderr


@pytest.mark.parametrize("rollout", options("rollout"))
def test_every_rollout_engine_takes_the_envs_episode_length(make_cfg, rollout):
    """An env that needs longer episodes (webnav: env.max_seq_len) gets them from every engine,
    not only from hf; an env without one gets the rollout default."""
    cfg = make_cfg("env=webnav", f"rollout={rollout}")
    assert cfg.env.max_seq_len > 512
    assert cfg.rollout.max_seq_len == cfg.env.max_seq_len
    if "max_model_len" in cfg.rollout.engine:
        assert cfg.rollout.engine.max_model_len == cfg.env.max_seq_len
    assert "max_seq_len" not in make_cfg("env=toolcalc").env
    assert make_cfg("env=toolcalc", f"rollout={rollout}").rollout.max_seq_len == 512
