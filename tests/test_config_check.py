"""Bad config values stop the run with one line and exit 2, before any model is loaded
(agentrl/config_check.py); every numeric setting of every config option has a rule.

The bad values are applied in-process to a few composed configs (Hydra parses each override
exactly as on the command line) and go through ``train.main`` with the model loaders replaced by
a tripwire; a few real ``launch.py`` runs check the same from the outside.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from agentrl import config_check, train
from agentrl.models import factory
from agentrl.utils.instantiate import ConfigError
from tests.conftest import CONF, ROOT, compose_config

# group choices composed once each; every case below takes a copy of one of them
BASES = {
    "default": [],
    "ppo": ["trainer=ddp", "algorithm=ppo", "env=webnav", "reward=api", "logger=wandb"],
    "dpo": ["algorithm=dpo", "env=tooluse", "reward=judge", "adapter=lora"],
    "rloo": ["algorithm=rloo", "env=codegen", "reward=learned"],
    "external": ["env=external", "reward=composite"],
    "fsdp": ["trainer=fsdp"],
    "vllm": ["rollout=vllm"],
}

# (base, overrides, the stderr line after "error: "; a prefix where the rest is long)
CASES = [
    # the cases of issue 21
    (
        "default",
        ["+optimizer.lrr=0.1"],
        "optimizer.lrr is not a setting of torch.optim.AdamW (accepted: lr, betas, eps,",
    ),
    ("default", ["rollout.temperature=0"], "rollout.temperature must be > 0, got 0"),
    # rollout.pipeline=overlap (agentrl/pipeline.py)
    ("default", ["rollout.pipeline=async"], "rollout.pipeline must be one of"),
    ("default", ["rollout.max_staleness=0"], "rollout.max_staleness must be >= 1, got 0"),
    ("default", ["rollout.max_reuse=0"], "rollout.max_reuse must be >= 1, got 0"),
    ("default", ["rollout.correction=clip"], "rollout.correction must be one of"),
    ("default", ["rollout.correction_cap=1.0"], "rollout.correction_cap must be > 1, got 1.0"),
    (
        "dpo",
        ["rollout.pipeline=overlap"],
        "rollout.pipeline=overlap needs an RL algorithm (algorithm.step=rl), not "
        "algorithm.step=preference; use rollout.pipeline=sync",
    ),
    (
        "fsdp",
        ["rollout.pipeline=overlap"],
        "rollout.pipeline=overlap does not support trainer=fsdp (its rollout thread holds a "
        "whole copy of the policy); use trainer=ddp or rollout.pipeline=sync",
    ),
    (
        "vllm",
        # what trainer=fsdp sets
        ["trainer.strategy._target_=lightning.pytorch.strategies.ModelParallelStrategy"],
        "rollout=vllm does not support trainer=fsdp (each rank's engine is loaded from and "
        "pushed the policy's whole weights, which FSDP shards); use trainer=ddp, where each "
        "rank runs its own engine, or rollout=hf",
    ),
    ("default", ["rollout.temperature=-1"], "rollout.temperature must be > 0, got -1"),
    ("default", ["rollout.top_p=0"], "rollout.top_p must be in (0, 1], got 0"),
    ("default", ["rollout.top_p=2"], "rollout.top_p must be in (0, 1], got 2"),
    ("default", ["rollout.max_seq_len=1"], "rollout.max_seq_len must be >= 2, got 1"),
    ("default", ["algorithm.clip_low=2"], "algorithm.clip_low must be in [0, 1), got 2"),
    (
        "default",
        ["trainer.val_check_interval=0"],
        "trainer.val_check_interval must be an integer >= 1 (RL steps) or a number in (0, 1] "
        "(a fraction of the run), got 0",
    ),
    ("default", ["seed=abc"], "seed must be an integer in [0, 4294967295], got 'abc'"),
    (
        "default",
        ["module.update_micro_batch_size=0"],
        "module.update_micro_batch_size must be >= 1, got 0",
    ),
    (
        "ppo",
        ["data.tasks_per_step=3"],
        "data.tasks_per_step must be divisible by trainer.devices x trainer.num_nodes = 2 "
        "(each rank takes whole tasks), got 3",
    ),
    (
        "ppo",
        ["logger.wandb.mode=online"],
        "logger.wandb.mode=online needs W&B credentials and none were found: run `wandb login`",
    ),
    # more of the same kinds, over the other groups
    ("default", ["rollout.max_seq_len=20"], "rollout.max_seq_len must be more than env.max_acti"),
    (
        "default",
        ["rollout.max_seq_len=2048"],
        "rollout.max_seq_len must be <= model.max_position_embeddings=1024",
    ),
    ("default", ["+rollout.tempreature=0.5"], "rollout.tempreature is not a setting of rollout"),
    (
        "default",
        ["+algorithm.kl_coeff=0.1"],
        "algorithm.kl_coeff is not a setting of agentrl.algorithms.grpo.GRPO (accepted: ",
    ),
    ("default", ["trainer.val_check_interval=1.5"], "trainer.val_check_interval must be an int"),
    ("default", ["data.steps=1.5"], "data.steps must be an integer >= 1, got 1.5"),
    ("default", ["data.num_val_tasks=0"], "data.num_val_tasks must be >= 1, got 0"),
    ("default", ["data.val_batch_size=-1"], "data.val_batch_size must be >= 1, got -1"),
    (
        "default",
        ["algorithm.step=preference"],
        "algorithm.step must be one of ('rl',), got 'preference'",
    ),
    ("default", ["optimizer.lr=0"], "optimizer.lr must be > 0, got 0"),
    ("default", ["optimizer.weight_decay=-0.1"], "optimizer.weight_decay must be >= 0, got -0.1"),
    ("default", ["optimizer.betas=[0.9,1.5]"], "optimizer.betas.1 must be in [0, 1), got 1.5"),
    ("default", ["warmstart.lr=0"], "warmstart.lr must be > 0, got 0"),
    ("default", ["warmstart.min_lr_ratio=2"], "warmstart.min_lr_ratio must be in [0, 1], got 2"),
    ("default", ["warmstart.warmup_steps=-1"], "warmstart.warmup_steps must be >= 0, got -1"),
    ("default", ["warmstart.batch_size=0"], "warmstart.batch_size must be >= 1, got 0"),
    ("default", ["algorithm.kl_coef=-0.1"], "algorithm.kl_coef must be >= 0, got -0.1"),
    ("default", ["algorithm.turn_gamma=1.5"], "algorithm.turn_gamma must be in [0, 1], got 1.5"),
    ("default", ["algorithm.max_grad_norm=0"], "algorithm.max_grad_norm must be > 0, got 0"),
    ("default", ["algorithm.epochs=0"], "algorithm.epochs must be >= 1, got 0"),
    (
        "default",
        ["algorithm.kl_estimator=k4"],
        "algorithm.kl_estimator must be one of ('k1', 'k2', 'k3'), got 'k4'",
    ),
    ("default", ["env.guess_prob=1.5"], "env.guess_prob must be in [0, 1], got 1.5"),
    ("default", ["env.num_train=0"], "env.num_train must be >= 1, got 0"),
    ("default", ["env.max_operand=0"], "env.max_operand must be >= 1, got 0"),
    ("default", ["reward.success_weight=abc"], "reward.success_weight must be a number, got 'abc'"),
    ("default", ["model.hidden_size=0"], "model.hidden_size must be >= 1, got 0"),
    ("default", ["trainer.devices=0"], "trainer.devices must be >= 1, got 0"),
    ("default", ["trainer.num_nodes=0"], "trainer.num_nodes must be >= 1, got 0"),
    (
        "default",
        ["callbacks.samples.every_n_steps=0"],
        "callbacks.samples.every_n_steps must be >= 1, got 0",
    ),
    (
        "default",
        ["rollout.engine.micro_batch_size=0"],
        "rollout.engine.micro_batch_size must be >= 1, got 0",
    ),
    ("default", ["num_threads=0"], "num_threads must be >= 1 or null, got 0"),
    (
        "default",
        ["validate_before_training=maybe"],
        "validate_before_training must be true or false, got 'maybe'",
    ),
    ("ppo", ["algorithm.lam=2"], "algorithm.lam must be in [0, 1], got 2"),
    ("ppo", ["algorithm.vf_coef=0"], "algorithm.vf_coef must be > 0, got 0"),
    ("ppo", ["env.num_categories=11"], "env.num_categories must be in [1, 10], got 11"),
    ("ppo", ["reward.timeout_s=0"], "reward.timeout_s must be > 0, got 0"),
    ("dpo", ["algorithm.beta=0"], "algorithm.beta must be > 0, got 0"),
    ("dpo", ["algorithm.label_smoothing=0.5"], "algorithm.label_smoothing must be in [0, 0.5)"),
    ("dpo", ["env.error_rate=2"], "env.error_rate must be in [0, 1], got 2"),
    ("dpo", ["reward.min_score=10"], "reward.max_score must be more than reward.min_score=10"),
    ("dpo", ["adapter.config.lora_dropout=1"], "adapter.config.lora_dropout must be in [0, 1)"),
    ("rloo", ["algorithm.clip_low=-0.1"], "algorithm.clip_low must be in [0, 1), got -0.1"),
    ("rloo", ["env.sandbox.memory_mb=0"], "env.sandbox.memory_mb must be >= 1, got 0"),
    ("rloo", ["reward.training.lr=0"], "reward.training.lr must be > 0, got 0"),
    (
        "rloo",
        ["reward.training.sources.rollouts.group_size=1"],
        "reward.training.sources.rollouts.group_size must be >= 2, got 1",
    ),
    ("external", ["env.tasks.max_turns=0"], "env.tasks.max_turns must be >= 1, got 0"),
    ("external", ["reward.eps=0"], "reward.eps must be > 0, got 0"),
    ("external", ["env.gateway.port=70000"], "env.gateway.port must be in [0, 65535], got 70000"),
    # a constructor's own check, reached before any model: the same one line
    (
        "default",
        ["algorithm.group_size=1"],
        "algorithm: algorithm.group_size must be >= 2 for GRPO (advantages are relative to the "
        "group), got 1",
    ),
]

_composed: dict[str, DictConfig] = {}


@pytest.fixture
def base(tmp_path_factory):
    def _get(name: str) -> DictConfig:
        if name not in _composed:
            folder = tmp_path_factory.mktemp(name)
            _composed[name] = compose_config(BASES[name], folder / "run", folder / "cache")
        return copy.deepcopy(_composed[name])

    return _get


def apply(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Set each ``key=value`` as Hydra parses it on the command line (``+`` adds a key)."""
    for override in OverridesParser.create().parse_overrides(overrides):
        OmegaConf.update(cfg, override.key_or_group, override.value(), force_add=True)
    return cfg


@pytest.fixture(autouse=True)
def no_credentials_no_models(monkeypatch, tmp_path):
    """No W&B key here (an empty netrc), and loading a model fails the test."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))

    def tripwire(self):
        raise AssertionError("a model was loaded")

    for cls in (factory.TinyModel, factory.PretrainedModel, factory.SmolLM2GGUF):
        monkeypatch.setattr(cls, "load", tripwire)


@pytest.mark.parametrize(("name", "overrides", "line"), CASES, ids=[" ".join(c[1]) for c in CASES])
def test_bad_value_is_one_line_and_exit_2(base, capsys, name, overrides, line):
    cfg = apply(base(name), overrides)
    with pytest.raises(SystemExit) as exit_:
        train.main(cfg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {line}"), err


@pytest.mark.parametrize("name", sorted(BASES))
def test_bases_validate(base, name):
    config_check.validate(base(name))


def test_wandb_online_with_a_key_passes(base, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    config_check.validate(apply(base("ppo"), ["logger.wandb.mode=online"]))


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.val_check_interval=0.5"],  # a fraction of the run
        ["trainer.devices=auto"],
        ["warmstart.enabled=false", "warmstart.steps=0"],  # a disabled stage is not checked
        ["num_threads=2", "rollout.top_p=0.9", "rollout.temperature=0.7"],
    ],
)
def test_good_values_pass(base, overrides):
    config_check.validate(apply(base("default"), overrides))


def test_overlap_with_vllm_passes(base):
    config_check.validate(apply(base("vllm"), ["rollout.pipeline=overlap"]))


def test_rule_messages():
    assert config_check.Int(1).problem(True) == "must be an integer >= 1"
    assert config_check.Num(0, 1).problem(float("nan")) == "must be a finite number"
    assert config_check.Num(0, lo_open=True, null=True).problem(None) is None
    assert config_check.OneOf("a", "b").problem("c") == "must be one of ('a', 'b')"


# --- every numeric setting has a rule


def numeric_without_rule(node, path: str = "") -> list[str]:
    """The numeric settings under ``node`` (at ``path``) that no rule covers."""
    return [
        p
        for p, target, rel, value in config_check.leaves(node, path)
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and config_check.rule_for(target, rel, p) is None
        # a reasoning-gym dataset's own settings: the package checks them
        and not (p.startswith("env.config.") and "ReasoningGym" in str(target))
    ]


def load_option(group: str, name: str) -> DictConfig:
    """A group option's YAML with the in-group defaults it names merged in (trainer/ddp.yaml
    builds on default.yaml, env/external.yaml puts toolcalc at tasks): enough to know each
    setting's target without composing."""
    node = OmegaConf.load(CONF / group / f"{name}.yaml")
    merged = OmegaConf.create()
    for entry in node.pop("defaults", None) or []:
        if isinstance(entry, str) and entry != "_self_":
            option, _, package = entry.partition("@")
            part = load_option(group, option)
            merged = OmegaConf.merge(merged, {package: part} if package else part)
    return OmegaConf.merge(merged, node)


def test_every_numeric_setting_of_every_option_has_a_rule():
    """Read from the YAML files (no composition): a numeric setting added to any option without
    a rule in agentrl/config_check.py fails here."""
    missing = numeric_without_rule(OmegaConf.load(CONF / "train.yaml"))
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir()):
        if folder.name in ("hydra", "experiment", "debug", "mode", "recipe"):
            continue  # Hydra's own; the global ones are composed below (recipes in experiments)
        for option in sorted(folder.glob("*.yaml")):
            node = load_option(folder.name, option.stem)
            missing += [
                f"{folder.name}={option.stem}: {p}" for p in numeric_without_rule(node, folder.name)
            ]
    assert not missing, missing


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_default_and_every_experiment_validate(tmp_path):
    """The default run, debug=smoke and every experiment are accepted and have a rule for each
    numeric setting (composed in one Hydra context: composing only, no training)."""
    refused = {}
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for overrides in [[], ["debug=smoke"]] + [[f"experiment={e}"] for e in EXPERIMENTS]:
            cfg = compose("train", overrides=overrides)
            with open_dict(cfg):
                cfg.paths.root_dir, cfg.paths.output_dir = str(ROOT), str(tmp_path)
                cfg.paths.cache_dir = str(tmp_path / "cache")
            try:
                config_check.validate(cfg)
                assert not numeric_without_rule(cfg), numeric_without_rule(cfg)
            except (ConfigError, AssertionError) as exc:
                refused[" ".join(overrides) or "default"] = str(exc)
    GlobalHydra.instance().clear()
    assert not refused, refused


def test_a_bad_experiment_value_is_caught(tmp_path):
    cfg = compose_config(["experiment=webnav_grpo", "env.buy_prob=-0.5"], tmp_path, tmp_path)
    with pytest.raises(ConfigError, match=r"^env.buy_prob must be in \[0, 1\], got -0.5$"):
        config_check.validate(cfg)


# --- the real command line


LAUNCHES = {
    "seed=abc": "error: seed must be an integer in [0, 4294967295], got 'abc'",
    "rollout.top_p=0": "error: rollout.top_p must be in (0, 1], got 0",
    "+optimizer.lrr=0.1": "error: optimizer.lrr is not a setting of torch.optim.AdamW",
    "hydra.run.dir=/dev/null/run": "error: hydra.run.dir=/dev/null/run cannot be the run "
    "directory (Not a directory); pass a writable folder",
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """All the launch.py runs at once (each mostly waits on imports)."""
    procs = {}
    for override, _ in LAUNCHES.items():
        run_dir = tmp_path_factory.mktemp("launch")
        args = [override] + ([] if override.startswith("hydra.") else [f"hydra.run.dir={run_dir}"])
        procs[override] = subprocess.Popen(
            [sys.executable, "launch.py", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    return {k: (p.communicate(timeout=300), p.returncode) for k, p in procs.items()}


@pytest.mark.parametrize("override", sorted(LAUNCHES))
def test_launch_bad_value_is_one_line_exit_2(launched, override):
    (out, err), code = launched[override]
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(LAUNCHES[override]), err
    assert "Traceback" not in err
    # seed_everything runs right after the checks: nothing was seeded, built or loaded
    assert "Seed set to" not in out + err and "warm start" not in (out + err).lower()
