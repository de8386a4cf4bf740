"""Policies for evaluation: each candidate's weights in a model rebuilt the way training built it.

A Lightning checkpoint holds ``policy.<param>`` weights (and ``reference.*``, ignored). Its model is
rebuilt from the run's config (``model`` node -> spec -> ``load()``), wrapped with the run's
adapter when enabled, and the weights are loaded strictly. The baseline is the same model before
RL: the weights the run started RL from, i.e. the warm-start result cached under
``warmstart.cache_dir/<key>`` when the run had a warm start, else the model spec's own weights.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from agentrl.evaluation.sources import Candidate, EvalError, policy_state, read_checkpoint
from agentrl.models.factory import ModelLoadError, PretrainedModel, apply_adapter
from agentrl.utils.instantiate import ConfigError, instantiate
from agentrl.warmstart import warmstart_identity

log = logging.getLogger(__name__)


def warmstart_weights(run_cfg: DictConfig) -> tuple[Path | None, str]:
    """(the cached warm-start weights of the run, or None; a description of the baseline)."""
    node = run_cfg.get("warmstart")
    ws = instantiate(node, "warmstart") if node is not None else None
    if ws is None or not ws.enabled:
        return None, "the run's model spec (the run had no warm start)"
    weights = ws.folder(warmstart_identity(run_cfg)) / "model.pt"
    if weights.is_file():
        return weights, f"the run's warm start (cached at {weights.parent})"
    return None, (
        f"the run's model spec WITHOUT its warm start: the cached weights {weights} are gone, so "
        "this baseline is weaker than the policy RL started from"
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _shape_mismatch(expected: dict, got: dict) -> str | None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    reshaped = [k for k in expected if k in got and tuple(expected[k]) != tuple(got[k].shape)]
    if not (missing or unexpected or reshaped):
        return None
    parts = [f"{len(missing)} missing", f"{len(unexpected)} unexpected", f"{len(reshaped)} resized"]
    if reshaped:
        k = reshaped[0]
        parts.append(f"e.g. {k}: checkpoint {list(got[k].shape)} vs model {list(expected[k])}")
    elif missing:
        parts.append(f"e.g. missing {missing[0]}")
    else:
        parts.append(f"e.g. unexpected {unexpected[0]}")
    return ", ".join(parts)


class RunPolicy:
    """The model of one training run, built once; each checkpoint's weights are loaded into it.

    ``baseline`` (when asked) loads the run's starting weights before the adapter is applied;
    evaluate the baseline first, inside ``baseline_context()``, then the checkpoints.
    """

    def __init__(self, run_cfg: DictConfig, device: torch.device, baseline: bool):
        self.run_cfg = run_cfg
        try:
            spec = instantiate(run_cfg.model, "model")
            spec.check()
            self.model, self.tokenizer = spec.load()
        except (ConfigError, ModelLoadError) as exc:
            raise EvalError(f"the run's model cannot be rebuilt: {exc}") from exc
        self.baseline_source = None
        if baseline:
            weights, self.baseline_source = warmstart_weights(run_cfg)
            if weights is not None:
                state = torch.load(weights, map_location="cpu", weights_only=True)
                self.model.load_state_dict(state)
        self.model = apply_adapter(self.model, run_cfg.get("adapter"))
        self.model.to(device).eval()
        self.shapes = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}

    def check(self, path: str) -> None:
        """Raise EvalError when the checkpoint's policy weights do not fit this model."""
        state = policy_state(read_checkpoint(path))
        problem = _shape_mismatch(self.shapes, state)
        if problem:
            raise EvalError(
                f"checkpoint {path} does not fit the model of its run config "
                f"({problem}); was it written by another model or adapter?"
            )

    def load(self, path: str) -> None:
        state = policy_state(read_checkpoint(path))
        self.model.load_state_dict(state, strict=True)

    def baseline_context(self):
        """The adapter switched off (exactly the base weights), or nothing to do."""
        if hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()


def load_hf(path: str, device: torch.device):
    """An exported ``save_pretrained`` folder -> (model, tokenizer), ready for generation."""
    try:
        model, tokenizer = PretrainedModel(path, local_files_only=True).load()
    except (ModelLoadError, OSError, ValueError) as exc:
        raise EvalError(f"model_dir {path} cannot be loaded: {exc}") from exc
    return model.to(device).eval(), tokenizer


class Policies:
    """Hands out (model, tokenizer, context) per candidate; one RunPolicy per run directory."""

    def __init__(self, run_configs: dict[str, DictConfig], device: torch.device, baseline: bool):
        self.device = device
        self.runs = {
            run: RunPolicy(cfg, device, baseline) for run, cfg in sorted(run_configs.items())
        }
        self._hf: dict[str, tuple] = {}

    def check(self, candidates: list[Candidate]) -> None:
        for c in candidates:
            if c.kind == "checkpoint":
                self.runs[c.run_dir].check(c.path)
            elif c.kind == "hf" and c.path not in self._hf:
                self._hf[c.path] = load_hf(c.path, self.device)

    def tokenizers(self, candidates: list[Candidate]) -> list[tuple[str, object, object]]:
        """(label, tokenizer, model) of every candidate, for input checks."""
        out = []
        for c in candidates:
            model, tokenizer, _ = self.prepare(c, load_weights=False)
            out.append((c.label, tokenizer, model))
        return out

    def prepare(self, c: Candidate, load_weights: bool = True):
        """(model, tokenizer, context manager to evaluate inside) with c's weights in place."""
        if c.kind == "hf":
            if c.path not in self._hf:
                self._hf[c.path] = load_hf(c.path, self.device)
            model, tokenizer = self._hf[c.path]
            return model, tokenizer, contextlib.nullcontext()
        run = self.runs[c.run_dir]
        if c.kind == "baseline":
            return run.model, run.tokenizer, run.baseline_context()
        if load_weights:
            run.load(c.path)
        return run.model, run.tokenizer, contextlib.nullcontext()

    def baseline_source(self, c: Candidate) -> str | None:
        return self.runs[c.run_dir].baseline_source if c.run_dir in self.runs else None
