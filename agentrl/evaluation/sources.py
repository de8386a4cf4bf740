"""What gets evaluated: the checkpoints of a run, a list of .ckpt files, or an exported HF folder,
plus the baseline (the model before RL), each described by a ``Candidate``.

Everything here is checked before any model runs: files exist and were written by agentrl, every
checkpoint has a run config (``<run dir>/.hydra/config.yaml``) to rebuild its model from.
Checkpoints of one run taken at the same RL step hold the same weights (``best.ckpt`` and
``last.ckpt`` often do) and are evaluated once, under both names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict


class EvalError(ValueError):
    """Bad evaluation input; the message is one line saying what is wrong and what to do."""


@dataclass
class Candidate:
    """One policy to evaluate.

    kind: "baseline" (the run's model before RL), "checkpoint" (a Lightning .ckpt) or "hf" (a
        save_pretrained folder).
    path: the .ckpt file or HF folder (None for the baseline).
    rl_step: the RL step of its weights (0 for the baseline; None when unknown).
    names: file stems sharing these weights ("best", "last").
    run_dir: the training run it belongs to (None for an HF folder outside a run).
    """

    kind: str
    path: str | None
    rl_step: int | None
    names: list[str] = field(default_factory=list)
    run_dir: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "hf":
            return Path(self.path).name
        step = f"step {self.rl_step}"
        # names other than the step's own (step4.ckpt is "step 4"): best, last...
        names = [n for n in self.names if n != f"step{self.rl_step}"]
        return f"{step} ({', '.join(names)})" if names else step


def load_run_config(run_dir: str | Path) -> DictConfig | None:
    """The composed config of a training run, with its paths pinned to where the run lived.

    Hydra writes ``.hydra/config.yaml`` with ``${hydra:...}`` interpolations in ``paths``; they are
    replaced by the run directory and the working directory recorded in ``.hydra/hydra.yaml``.
    """
    run_dir = Path(run_dir).resolve()
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise EvalError(f"the run config {path} cannot be read: {exc}") from exc
    cwd = _hydra_cwd(run_dir) or str(Path.cwd())
    with open_dict(cfg):
        if "paths" not in cfg:
            cfg.paths = {}
        root = OmegaConf.to_container(cfg.paths, resolve=False).get("root_dir")
        if root is None or "${hydra:" in str(root):
            cfg.paths.root_dir = cwd
        cfg.paths.output_dir = str(run_dir)
    return cfg


def hydra_runtime(run_dir: str | Path) -> dict:
    """``hydra.runtime`` of a run's ``.hydra/hydra.yaml`` (cwd, group choices...); {} without one."""
    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    try:
        runtime = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("runtime", {})
    except yaml.YAMLError:
        return {}
    return runtime if isinstance(runtime, dict) else {}


def _hydra_cwd(run_dir: Path) -> str | None:
    return hydra_runtime(run_dir).get("cwd")


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """A Lightning checkpoint written by agentrl, memory-mapped (weights are read lazily)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False, mmap=True)
    except Exception as exc:
        raise EvalError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "agentrl" not in state or "state_dict" not in state:
        raise EvalError(f"checkpoint {path} was not written by agentrl (no 'agentrl' section)")
    return state


def policy_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The policy's weights of a module state dict (``policy.<name>`` -> ``<name>``)."""
    prefix = "policy."
    return {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }


def run_dir_of_checkpoint(path: Path) -> Path:
    """``<run dir>/checkpoints/x.ckpt`` -> ``<run dir>``."""
    return path.resolve().parent.parent


def checkpoint_candidates(paths: list[Path]) -> list[Candidate]:
    """One candidate per (run, RL step), in RL-step order; each file checked."""
    merged: dict[tuple[str, int], Candidate] = {}
    for path in dict.fromkeys(p.resolve() for p in paths):
        if not path.is_file():
            raise EvalError(f"checkpoint {path} does not exist")
        run_dir = run_dir_of_checkpoint(path)
        if not (run_dir / ".hydra" / "config.yaml").is_file():
            raise EvalError(
                f"checkpoint {path} has no run config at {run_dir}/.hydra/config.yaml to rebuild "
                "its model from (checkpoints are expected in <run dir>/checkpoints/)"
            )
        step = int(read_checkpoint(path)["agentrl"]["rl_step"])
        key = (str(run_dir), step)
        if key not in merged:
            merged[key] = Candidate("checkpoint", str(path), step, [], str(run_dir))
        merged[key].names.append(path.stem)
    return sorted(merged.values(), key=lambda c: (c.run_dir, c.rl_step))


def run_checkpoints(run_dir: Path) -> list[Path]:
    """Every ``*.ckpt`` under ``<run_dir>/checkpoints``."""
    if not run_dir.is_dir():
        raise EvalError(f"run_dir {run_dir} does not exist")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise EvalError(
            f"run_dir {run_dir} has no .hydra/config.yaml: not a run directory of launch.py"
        )
    found = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if not found:
        raise EvalError(
            f"run_dir {run_dir} has no checkpoints (nothing matches {run_dir}/checkpoints/*.ckpt)"
        )
    return found


def hf_candidate(model_dir: Path) -> Candidate:
    """An exported folder; inside a run (``<run dir>/export``) it takes the run's last RL step."""
    if not (model_dir / "config.json").is_file():
        raise EvalError(f"model_dir {model_dir} is not a save_pretrained folder (no config.json)")
    run_dir = model_dir.resolve().parent
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        return Candidate("hf", str(model_dir), None)
    last = run_dir / "checkpoints" / "last.ckpt"
    step = int(read_checkpoint(last)["agentrl"]["rl_step"]) if last.is_file() else None
    return Candidate("hf", str(model_dir), step, [], str(run_dir))


def discover(cfg: DictConfig) -> list[Candidate]:
    """The candidates named by exactly one of ``run_dir``, ``checkpoints`` or ``model_dir``,
    preceded by the baseline when ``baseline`` is true and a run config exists."""
    given = [k for k in ("run_dir", "checkpoints", "model_dir") if cfg.get(k)]
    if len(given) != 1:
        raise EvalError(
            "give exactly one of run_dir=<run dir>, checkpoints=[a.ckpt,...] or "
            f"model_dir=<exported folder> (got {', '.join(given) or 'none'})"
        )
    if cfg.get("run_dir"):
        found = checkpoint_candidates(run_checkpoints(Path(cfg.run_dir)))
    elif cfg.get("checkpoints"):
        found = checkpoint_candidates([Path(p) for p in cfg.checkpoints])
    else:
        found = [hf_candidate(Path(cfg.model_dir))]
    runs = sorted({c.run_dir for c in found if c.run_dir})
    if cfg.get("baseline") and len(runs) == 1:
        found.insert(0, Candidate("baseline", None, 0, [], runs[0]))
    return found
