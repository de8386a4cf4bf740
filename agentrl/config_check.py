"""The value checks of a composed config, run before anything is built or loaded.

One table of rules: for each ``_target_`` class the rules of its settings (so a ToolCalc config
is checked the same at ``env``, at ``env.tasks`` of env=external, and a HeuristicReward at
``reward`` or inside a composite's parts), and for the nodes without a target (``rollout``, the
root) rules by dotted path. A rule knows the kind (integer, number, one of some words), the range
and whether null is allowed; a bad value is one line, ``<key> must be ..., got ...``.

Besides the table: keys a target's constructor does not take (``+optimizer.lrr=0.1``) are refused
with the accepted ones listed, and a few checks relate two settings (validation interval and
steps, tasks per step and ranks, the episode length and the action length, W&B online mode and
credentials). ``tests/test_config_check.py`` asserts that every numeric setting of every option of
every config group has a rule, so a new one cannot go unchecked.
"""

from __future__ import annotations

import inspect
import math
import netrc
import os
import re
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, ListConfig, OmegaConf

from agentrl.utils.instantiate import ConfigError, check_targets


@dataclass(frozen=True)
class Rule:
    """kind: int, num (int or float), word (one of ``choices``), bool, any_int (an int in the
    range, or any string: trainer.devices=auto) or steps_or_fraction (an int >= 1 or a float in
    (0, 1]: Lightning's val_check_interval). ``lo``/``hi`` bound the value, excluded when
    ``lo_open``/``hi_open``; ``null``: None is allowed."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    null: bool = False
    choices: tuple = ()

    def bounds(self) -> str:
        lo, hi = _fmt(self.lo), _fmt(self.hi)
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return ""

    def problem(self, value: Any) -> str | None:
        """The ``must be ...`` part of the message when ``value`` breaks the rule, else None."""
        null = " or null" if self.null else ""
        if value is None:
            return None if self.null else f"must be {self._what()}"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"must be true or false{null}"
        if self.kind == "word":
            return None if value in self.choices else f"must be one of {self.choices}{null}"
        if self.kind == "any_int" and isinstance(value, str):
            return None
        if self.kind == "steps_or_fraction":
            fraction = isinstance(value, float) and 0 < value <= 1
            whole = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            return None if fraction or whole else f"must be {self._what()}"
        whole = self.kind in ("int", "any_int")
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            return f"must be {self._what()}{null}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number{null}"
        if not self._in_range(value):
            return f"must be {self.bounds()}{null}"
        return None

    def _what(self) -> str:
        if self.kind in ("bool", "word"):
            return "true or false" if self.kind == "bool" else f"one of {self.choices}"
        if self.kind == "steps_or_fraction":
            return "an integer >= 1 (RL steps) or a number in (0, 1] (a fraction of the run)"
        noun = "an integer" if self.kind in ("int", "any_int") else "a number"
        return f"{noun} {self.bounds()}".rstrip()

    def _in_range(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))


def _fmt(x: float | None) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() else repr(x))


def Int(lo=None, hi=None, null=False) -> Rule:  # noqa: N802 (reads as a type in the table)
    return Rule("int", lo, hi, null=null)


def Num(lo=None, hi=None, *, lo_open=False, hi_open=False, null=False) -> Rule:  # noqa: N802
    return Rule("num", lo, hi, lo_open, hi_open, null)


def OneOf(*choices, null=False) -> Rule:  # noqa: N802
    return Rule("word", choices=choices, null=null)


COUNT = Int(1)  # sizes, steps, tries: at least one
NONNEG_INT = Int(0)  # 0 means none (or off)
SEED = Int(0, 2**32 - 1)  # numpy's seed range, which Lightning's seed_everything enforces
POS = Num(0, lo_open=True)  # learning rates, timeouts, temperatures
NONNEG = Num(0)  # weights, penalties, decays
PROB = Num(0, 1)
ANY = Num()  # any finite number (a reward weight may be negative)
FLAG = Rule("bool")

# --- algorithms: the fields objective.check_fields reads, plus each one's own
_ALGO_SHARED = {
    # >= 2 where the group is the baseline: GRPO's and RLOO's constructors say so, with the why
    "group_size": COUNT,
    # ratio >= 1 - clip_low: a clip_low of 1 or more leaves the ratio unbounded below
    "clip_low": Num(0, 1, hi_open=True),
    "clip_high": NONNEG,
    "kl_coef": NONNEG,
    "kl_estimator": OneOf("k1", "k2", "k3"),
    "kl_mode": OneOf("loss", "reward"),
    "kl_target": Num(0, lo_open=True, null=True),
    "kl_horizon": COUNT,
    "aggregation": OneOf("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", null=True),
    "max_completion_length": Int(1, null=True),
    "dynamic_sampling": FLAG,
    "tis_cap": Num(0, lo_open=True, null=True),
    "epochs": COUNT,
    "minibatches": COUNT,
    "max_grad_norm": POS,
    "credit": OneOf("trajectory", "turn", "transition"),
    "turn_gamma": PROB,
    # the training step that runs the algorithm (agentrl/module.py STEPS)
    "step": OneOf("rl"),
}
_GRPO = {
    **_ALGO_SHARED,
    "loss_type": OneOf("grpo", "dr_grpo", "dapo", "gspo"),
    "scale_rewards": FLAG,
}
_PPO = {
    **_ALGO_SHARED,
    "value_head": OneOf("shared", "separate"),
    "gamma": PROB,
    "lam": PROB,
    "vf_coef": POS,
    "value_clip": Num(0, lo_open=True, null=True),
    "normalize_advantages": FLAG,
}
_DPO = {
    "loss_type": OneOf("dpo", "ipo"),
    "beta": POS,
    "label_smoothing": Num(0, 0.5, hi_open=True),
    "pairs": OneOf("env", "file", "reference", "policy"),
    "group_size": COUNT,
    "max_tries": COUNT,
    "epochs": COUNT,
    "minibatches": COUNT,
    "max_grad_norm": POS,
    "step": OneOf("preference"),
}

# --- envs
_SPLITS = {"seed": SEED, "num_train": COUNT, "num_val": COUNT, "num_test": COUNT}
_EPISODE = {"max_turns": COUNT, "max_action_tokens": COUNT}
_TOOLCALC = {
    **_SPLITS,
    **_EPISODE,
    "max_ops": COUNT,
    "max_operand": COUNT,
    "max_value": COUNT,
    "mistake_prob": PROB,
    "guess_prob": PROB,
    "left_to_right": FLAG,
}
_CODEGEN = {
    **_SPLITS,
    "max_steps": COUNT,
    "max_constant": COUNT,
    "num_tests": COUNT,
    "num_examples": NONNEG_INT,
    "bundled_val_fraction": PROB,
    "bundled_test_fraction": PROB,
    "max_revisions": NONNEG_INT,
    "all_pass_bonus": NONNEG,
    "max_action_tokens": COUNT,
    "max_failures_shown": NONNEG_INT,
    "max_feedback_chars": COUNT,
    "max_code_chars": COUNT,
    # 0: only the sandbox's own limits
    "per_test_seconds": NONNEG,
    "guess_prob": PROB,
    "fix_prob": PROB,
    "mistake_prob": PROB,
    "cache_size": NONNEG_INT,
}
_SANDBOX = {
    "cpu_seconds": POS,
    "wall_seconds": POS,
    "memory_mb": COUNT,
    "file_size_kb": COUNT,
    "max_processes": COUNT,
    "max_output_bytes": COUNT,
    "uid_base": COUNT,
    "workdir_size_mb": COUNT,
    "workdir_files": COUNT,
}
_REASONING_GYM = {
    **_SPLITS,
    **_EPISODE,
    "calculator": FLAG,
    "success_threshold": PROB,
    "guess_prob": PROB,
    # env.config.* are the dataset's own settings: reasoning_gym checks them
}
_TOOLUSE = {
    **_SPLITS,
    **_EPISODE,
    # quantities are drawn from 2..max_quantity
    "max_quantity": Int(2),
    "latency_s": NONNEG,
    "error_rate": PROB,
    "timeout_rate": PROB,
    "timeout_s": POS,
    "restart_service": FLAG,
    "skip_convert_prob": PROB,
    "mistake_prob": PROB,
}
_WEBNAV = {
    **_SPLITS,
    **_EPISODE,
    "backend": OneOf("text", "browser"),
    "num_categories": Int(1, 10),
    "page_size": COUNT,
    "buy_prob": PROB,
    "max_seq_len": Int(2),
    "step_penalty": NONNEG,
    "guess_prob": PROB,
    "mistake_prob": PROB,
    "browse_prob": PROB,
    "size_query_prob": PROB,
    "fix_prob": PROB,
    "kind_query_prob": PROB,
    "http_timeout": POS,
}
_EXTERNAL = {"timeout_s": POS, "max_concurrency": COUNT, "workers": COUNT}
_GATEWAY = {
    "port": Int(0, 65535),
    "allow_remote": FLAG,
    "max_batch_size": COUNT,
    "batch_window_s": NONNEG,
    "request_timeout_s": POS,
    "max_body_bytes": COUNT,
    "min_reward": ANY,
    "max_reward": ANY,
}

# --- rewards
_SHAPING = {"step_penalty": NONNEG, "invalid_penalty": NONNEG}
_HEURISTIC = {**_SHAPING, "success_weight": ANY, "format_bonus": NONNEG}
_ENV_RETURN = {**_SHAPING, "weight": ANY}
_COMPOSITE = {
    "eps": POS,
    "parts.*.weight": ANY,
    "parts.*.normalize": OneOf("none", "running", "batch"),
}
_RETRIES = {"max_retries": NONNEG_INT, "backoff_s": NONNEG, "max_concurrency": COUNT}
_API = {
    **_RETRIES,
    "batch_size": COUNT,
    "timeout_s": POS,
    "backoff_max_s": NONNEG,
    "cache_size": NONNEG_INT,
    "on_failure": OneOf("drop", "default", "stop"),
    "default_value": ANY,
}
_JUDGE = {
    **_RETRIES,
    "backend": OneOf("local", "openai"),
    "relative": FLAG,
    "min_score": ANY,
    "max_score": ANY,
    "max_new_tokens": COUNT,
    "temperature": NONNEG,
    "unparseable_value": Num(null=True),
    "timeout_s": POS,
    "batch_size": COUNT,
}
_LEARNED = {
    "init": OneOf("scratch", "warmstart"),
    "batch_size": COUNT,
    "max_len": Int(2),
    "scale": ANY,
    "training.sources.env.num_tasks": NONNEG_INT,
    "training.sources.rollouts.num_tasks": NONNEG_INT,
    # best vs worst of a group: two at least
    "training.sources.rollouts.group_size": Int(2),
    "training.sources.rollouts.temperature": POS,
    "training.val_tasks": NONNEG_INT,
    "training.val_fraction": Num(0, 1, hi_open=True),
    "training.steps": COUNT,
    "training.batch_size": COUNT,
    "training.lr": POS,
    "training.weight_decay": NONNEG,
    "training.warmup_steps": NONNEG_INT,
    "training.center_coef": NONNEG,
    "training.val_every": COUNT,
    "training.seed": SEED,
}

# --- models
_TINY = {
    "arch": OneOf("qwen2", "llama"),
    "hidden_size": COUNT,
    "num_layers": COUNT,
    "num_heads": COUNT,
    "num_kv_heads": COUNT,
    "intermediate_size": COUNT,
    "max_position_embeddings": Int(2),
    "seed": SEED,
    "tie_word_embeddings": FLAG,
}
_DTYPES = ("float32", "bfloat16", "float16")

# target class -> {dotted setting (fnmatch pattern) -> rule}
TARGET_RULES: dict[str, dict[str, Rule]] = {
    "agentrl.algorithms.grpo.GRPO": _GRPO,
    "agentrl.algorithms.rloo.RLOO": _ALGO_SHARED,
    "agentrl.algorithms.reinforce_pp.ReinforcePP": {**_ALGO_SHARED, "group_baseline": FLAG},
    "agentrl.algorithms.ppo.PPO": _PPO,
    "agentrl.algorithms.dpo.DPO": _DPO,
    "agentrl.data.TaskDataModule": {
        "tasks_per_step": COUNT,
        "steps": COUNT,
        "num_val_tasks": COUNT,
        "val_batch_size": COUNT,
        "seed": SEED,
    },
    "agentrl.warmstart.WarmStart": {
        "enabled": FLAG,
        "steps": COUNT,
        "batch_size": COUNT,
        "lr": POS,
        "weight_decay": NONNEG,
        "warmup_steps": NONNEG_INT,
        "min_lr_ratio": PROB,
        "num_demos": COUNT,
        "seed": SEED,
        "precision": OneOf("32-true", "bf16-mixed", null=True),
    },
    "agentrl.module.AgentRLModule": {
        "temperature": POS,
        "top_p": Num(0, 1, lo_open=True),
        "max_seq_len": Int(2),
        "update_micro_batch_size": COUNT,
        "seed": SEED,
        "pipeline": OneOf("sync", "overlap"),
        "max_staleness": COUNT,
        "max_reuse": COUNT,
        "correction": OneOf("tis", "mask", "none"),
        "correction_cap": Num(1, lo_open=True),
    },
    "agentrl.rollout.engine.HFEngine": {"micro_batch_size": COUNT},
    "agentrl.rollout.vllm_engine.VLLMEngine": {
        "dtype": OneOf("auto", *_DTYPES),
        "gpu_memory_utilization": Num(0, 1, lo_open=True),
        "kv_cache_gb": Num(0, lo_open=True, null=True),
        "max_model_len": Int(2),
        "enable_prefix_caching": FLAG,
        "enforce_eager": FLAG,
        "enable_chunked_prefill": FLAG,
        "lora_sync": OneOf("adapter", "merged"),
        "seed": SEED,
    },
    "agentrl.envs.toolcalc.ToolCalc": _TOOLCALC,
    "agentrl.envs.codegen.CodeGen": _CODEGEN,
    "agentrl.envs.sandbox.Sandbox": _SANDBOX,
    "agentrl.envs.reasoning_gym.ReasoningGym": _REASONING_GYM,
    "agentrl.envs.tooluse.ToolUse": _TOOLUSE,
    "agentrl.envs.webnav.WebNav": _WEBNAV,
    "agentrl.envs.external.ExternalAgent": _EXTERNAL,
    "agentrl.gateway.server.Gateway": _GATEWAY,
    "agentrl.rewards.heuristic.HeuristicReward": _HEURISTIC,
    "agentrl.rewards.env_return.EnvReturn": _ENV_RETURN,
    "agentrl.rewards.composite.CompositeReward": _COMPOSITE,
    "agentrl.rewards.api.ApiReward": _API,
    "agentrl.rewards.judge.JudgeReward": _JUDGE,
    "agentrl.rewards.learned.LearnedReward": _LEARNED,
    "agentrl.models.factory.TinyModel": _TINY,
    "agentrl.models.factory.PretrainedModel": {"dtype": OneOf("auto", *_DTYPES)},
    "agentrl.models.factory.SmolLM2GGUF": {"dtype": OneOf("float32", "bfloat16")},
    "peft.LoraConfig": {"r": COUNT, "lora_alpha": POS, "lora_dropout": Num(0, 1, hi_open=True)},
    "lightning.Trainer": {
        # an int, "auto" or a device list ("0,1")
        "devices": Rule("any_int", 1),
        "num_nodes": COUNT,
        # -1: no limit
        "max_epochs": Int(-1),
        "num_sanity_val_steps": Int(-1),
        "log_every_n_steps": COUNT,
        # validate every this many RL steps, or at this fraction of the run (Lightning's epoch)
        "val_check_interval": Rule("steps_or_fraction"),
        "enable_progress_bar": FLAG,
        "enable_model_summary": FLAG,
    },
    "agentrl.callbacks.RLModelCheckpoint": {"save_top_k": Int(-1)},
    # 0: no summary; -1: every level
    "agentrl.callbacks.ModelSummary": {"max_depth": Int(-1)},
    "agentrl.callbacks.TrajectoryWriter": {"every_n_steps": COUNT, "num_samples": COUNT},
    "agentrl.evaluation.checkpoints.RLStepCheckpoint": {"every_n_steps": COUNT},
    "agentrl.loggers.ResumableWandbLogger": {"mode": OneOf("online", "offline", "disabled")},
}

# dotted path (fnmatch pattern) -> rule, for settings outside any target and for the optimizer
# (whichever torch.optim class it is, these mean the same)
PATH_RULES: dict[str, Rule] = {
    "seed": SEED,
    "num_threads": Int(1, null=True),
    "validate_before_training": FLAG,
    "rollout.temperature": POS,
    # top_p = 0 keeps no token at all (torch.multinomial fails mid-rollout)
    "rollout.top_p": Num(0, 1, lo_open=True),
    "rollout.max_seq_len": Int(2),
    "rollout.pipeline": OneOf("sync", "overlap"),
    # a fresh overlap batch is one update old: 0 would drop every one of them
    "rollout.max_staleness": COUNT,
    "rollout.max_reuse": COUNT,
    "rollout.correction": OneOf("tis", "mask", "none"),
    "rollout.correction_cap": Num(1, lo_open=True),
    "optimizer.lr": POS,
    "optimizer.weight_decay": NONNEG,
    "optimizer.eps": POS,
    "optimizer.momentum": Num(0, 1, hi_open=True),
    "optimizer.betas.*": Num(0, 1, hi_open=True),
    "adapter.enabled": FLAG,
    "adapter.quantization.quant_type": OneOf("nf4", "fp4"),
    "adapter.quantization.double_quant": FLAG,
    "adapter.quantization.compute_dtype": OneOf(*_DTYPES),
    "adapter.quantization.gradient_checkpointing": FLAG,
}

# the keys train.py reads from the nodes that have no constructor to refuse the others
PLAIN_KEYS = {
    "rollout": (
        "engine",
        "temperature",
        "top_p",
        "max_seq_len",
        "observation_role",
        "pipeline",
        "max_staleness",
        "max_reuse",
        "correction",
        "correction_cap",
    ),
    "adapter": ("enabled", "config", "quantization"),
}

# a pure reference to another setting (${rollout.top_p}): that setting is checked at its own key
_REFERENCE = re.compile(r"^\$\{[\w.\-\[\]]+\}$")


def validate(cfg: DictConfig) -> None:
    """Raise a one-line ConfigError for the first setting of ``cfg`` that cannot work."""
    check_targets(cfg, "")
    check_values(cfg)
    _check_keys(cfg, "")
    for check in RELATIONS:
        check(cfg)


def rule_for(target: str | None, rel: str, path: str) -> Rule | None:
    """The rule of a setting: by its target's table (``rel`` is the key below the target's
    node), else by its full dotted ``path``."""
    for pattern, rule in TARGET_RULES.get(target or "", {}).items():
        if fnmatchcase(rel, pattern):
            return rule
    for pattern, rule in PATH_RULES.items():
        if fnmatchcase(path, pattern):
            return rule
    return None


def leaves(cfg: DictConfig, path: str = ""):
    """(path, target, rel, value) of every setting of ``cfg`` (found at ``path``) that is not a
    reference to another; the value resolved (``${oc.env:...}`` included). Settings that cannot
    be resolved here (``${hydra:...}`` outside a Hydra run) are left out."""
    yield from _leaves(cfg, path, None, "")


def _leaves(node, path: str, target: str | None, rel: str):
    if isinstance(node, DictConfig):
        if node._is_missing() or node._is_none():
            return
        if isinstance(node.get("_target_", None), str):
            target, rel = node._target_, ""
        for key in node:
            child = node._get_node(key)
            if _is_reference(child):
                continue
            yield from _leaves(child, _join(path, key), target, _join(rel, key))
    elif isinstance(node, ListConfig):
        if node._is_missing() or node._is_none():
            return
        for i in range(len(node)):
            child = node._get_node(i)
            if not _is_reference(child):
                yield from _leaves(child, _join(path, i), target, _join(rel, i))
    else:
        try:
            value = node._dereference_node()._value() if node._is_interpolation() else node._value()
        except Exception:  # e.g. ${hydra:...} outside a Hydra run: nothing to check here
            return
        yield path, target, rel, value


def check_values(cfg: DictConfig) -> None:
    """Every setting that has a rule, against it."""
    for path, target, rel, value in leaves(cfg):
        if _disabled(cfg, path):
            continue
        rule = rule_for(target, rel, path)
        problem = rule.problem(value) if rule else None
        if problem:
            raise ConfigError(f"{path} {problem}, got {value!r}")


def _disabled(cfg: DictConfig, path: str) -> bool:
    """A setting under a node with ``enabled: false`` (warmstart, adapter) is not used."""
    parts = path.split(".")
    for depth in range(1, len(parts)):
        node = _select(cfg, ".".join(parts[:depth]))
        if isinstance(node, DictConfig) and node.get("enabled", True) is False:
            return parts[depth] != "enabled"
    return False


def _select(cfg: DictConfig, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node._get_node(part)
        if _is_reference(node):
            return None
    return node


def _is_reference(node) -> bool:
    return node._is_interpolation() and bool(_REFERENCE.match(str(node._value())))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --- keys the constructors do not take


def _check_keys(node: Any, path: str) -> None:
    if isinstance(node, DictConfig) and not _is_reference(node):
        target = node.get("_target_", None) if "_target_" in node else None
        if isinstance(target, str):
            _check_target_keys(node, path, target)
        elif path in PLAIN_KEYS:
            unknown = sorted(str(k) for k in node if k not in PLAIN_KEYS[path])
            if unknown:
                raise ConfigError(
                    f"{path}.{unknown[0]} is not a setting of {path} "
                    f"(accepted: {', '.join(PLAIN_KEYS[path])})"
                )
        for key in node:
            _check_keys(node._get_node(key), _join(path, key))


def _check_target_keys(node: DictConfig, path: str, target: str) -> None:
    params = _parameters(target)
    if params is None:  # takes **kwargs, or cannot be inspected: its constructor decides
        return
    given = [str(k) for k in node if not str(k).startswith("_")]
    unknown = [k for k in given if k not in params]
    if unknown:
        # the arguments a partial target gets at runtime (the optimizer's params) are not settings
        partial = bool(node.get("_partial_", False))
        accepted = [k for k, required in params.items() if not (partial and required)]
        raise ConfigError(
            f"{_join(path, unknown[0])} is not a setting of {target} "
            f"(accepted: {', '.join(accepted)})"
        )


_SIGNATURES: dict[str, dict[str, bool] | None] = {}


def _parameters(target: str) -> dict[str, bool] | None:
    """name -> required (no default) of a target's keyword parameters, None when it takes any
    keyword (**kwargs) or cannot be imported here (instantiation then reports why)."""
    if target not in _SIGNATURES:
        try:
            from hydra.utils import get_object

            params = inspect.signature(get_object(target)).parameters.values()
        except Exception:
            _SIGNATURES[target] = None
            return None
        named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY)]
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
        _SIGNATURES[target] = None if takes_any else {p.name: p.default is p.empty for p in named}
    return _SIGNATURES[target]


# --- settings that only make sense together


def _value(cfg: DictConfig, path: str) -> Any:
    try:
        return OmegaConf.select(cfg, path, throw_on_resolution_failure=True)
    except Exception:
        return None


def _ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def check_validation_interval(cfg: DictConfig) -> None:
    """An interval of more RL steps than the run has never validates."""
    every, steps = _value(cfg, "trainer.val_check_interval"), _value(cfg, "data.steps")
    if _ints(every, steps) and 0 < steps < every:
        raise ConfigError(
            f"trainer.val_check_interval={every} is more than data.steps={steps}: the run would "
            f"never validate; set trainer.val_check_interval to at most {steps}"
        )


def check_ranks(cfg: DictConfig) -> None:
    """Each rank collects whole tasks of a step: tasks_per_step splits evenly over the ranks."""
    devices, nodes = _value(cfg, "trainer.devices"), _value(cfg, "trainer.num_nodes") or 1
    tasks = _value(cfg, "data.tasks_per_step")
    if _ints(devices, nodes, tasks) and tasks % (devices * nodes):
        raise ConfigError(
            f"data.tasks_per_step must be divisible by trainer.devices x trainer.num_nodes = "
            f"{devices * nodes} (each rank takes whole tasks), got {tasks}"
        )


def check_episode_length(cfg: DictConfig) -> None:
    """An episode holds the prompt and at least one action: rollout.max_seq_len must be more
    than the env's action budget, and within the model's positions when it has a limit."""
    length = _value(cfg, "rollout.max_seq_len")
    env = _value(cfg, "env")
    source = env.get("tasks") if isinstance(env, DictConfig) else None
    action = _value(cfg, "env.max_action_tokens")
    if action is None and isinstance(source, DictConfig):
        action = source.get("max_action_tokens")
    if _ints(length, action) and length <= action:
        raise ConfigError(
            f"rollout.max_seq_len must be more than env.max_action_tokens={action} (an episode "
            f"holds the prompt and at least one action), got {length}"
        )
    positions = _value(cfg, "model.max_position_embeddings")
    if _ints(length, positions) and length > positions:
        raise ConfigError(
            f"rollout.max_seq_len must be <= model.max_position_embeddings={positions} (the "
            f"model sees no further), got {length}"
        )


def check_ordered_pairs(cfg: DictConfig) -> None:
    for low, high in [
        ("reward.min_score", "reward.max_score"),
        ("env.gateway.min_reward", "env.gateway.max_reward"),
    ]:
        lo, hi = _value(cfg, low), _value(cfg, high)
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not lo < hi:
            raise ConfigError(f"{high} must be more than {low}={lo}, got {hi}")


def check_wandb_login(cfg: DictConfig) -> None:
    """W&B online without an API key stops wandb.init (after the model loaded) with a traceback;
    the key comes from WANDB_API_KEY or the netrc entry `wandb login` writes."""
    for name, logger in (_value(cfg, "logger") or {}).items():
        if not isinstance(logger, DictConfig) or "Wandb" not in str(logger.get("_target_", "")):
            continue
        if _value(cfg, f"logger.{name}.mode") == "online" and not wandb_logged_in():
            raise ConfigError(
                f"logger.{name}.mode=online needs W&B credentials and none were found: run "
                f"`wandb login` or set WANDB_API_KEY, or log offline (WANDB_MODE=offline, "
                f"then `wandb sync <run dir>/wandb/offline-run-*`)"
            )


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_pipeline(cfg: DictConfig) -> None:
    """rollout.pipeline=overlap needs an RL algorithm and a trainer whose policy is whole on
    each rank (its rollout thread copies it): not the preference step, not trainer=fsdp
    (docs/scale.md, "Overlapping rollouts and updates")."""
    if _value(cfg, "rollout.pipeline") != "overlap":
        return
    step = _value(cfg, "algorithm.step")
    if step not in (None, "rl"):
        raise ConfigError(
            f"rollout.pipeline=overlap needs an RL algorithm (algorithm.step=rl), not "
            f"algorithm.step={step}; use rollout.pipeline=sync"
        )
    if str(_value(cfg, "trainer.strategy._target_") or "").endswith("ModelParallelStrategy"):
        raise ConfigError(
            "rollout.pipeline=overlap does not support trainer=fsdp (its rollout thread holds a "
            "whole copy of the policy); use trainer=ddp or rollout.pipeline=sync"
        )


def check_engine(cfg: DictConfig) -> None:
    """rollout=vllm runs one engine per rank on the policy's whole weights: with trainer=ddp
    (or one process), not with trainer=fsdp, whose ranks hold shards."""
    engine = str(_value(cfg, "rollout.engine._target_") or "")
    strategy = str(_value(cfg, "trainer.strategy._target_") or "")
    if engine.endswith("VLLMEngine") and strategy.endswith("ModelParallelStrategy"):
        raise ConfigError(
            "rollout=vllm does not support trainer=fsdp (each rank's engine is loaded from and "
            "pushed the policy's whole weights, which FSDP shards); use trainer=ddp, where each "
            "rank runs its own engine, or rollout=hf"
        )


RELATIONS = (
    check_pipeline,
    check_engine,
    check_validation_interval,
    check_ranks,
    check_episode_length,
    check_ordered_pairs,
    check_wandb_login,
)


# --- the run directory, which Hydra creates before any of the above runs

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover (Hydra < 1.2)
    Callback = object  # type: ignore[assignment,misc]


class RunDirCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): an unusable run directory is one line and exit
    2, not the traceback of Hydra's own mkdir."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)

    @staticmethod
    def _check(key: str, folder: str) -> None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError("not writable")
        except OSError as exc:
            reason = exc.strerror or str(exc)
            # SystemExit passes Hydra's callback guard (it catches Exception only)
            print(
                f"error: {key}={folder} cannot be the run directory ({reason}); pass a "
                f"writable folder",
                file=sys.stderr,
            )
            sys.exit(2)
