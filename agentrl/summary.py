"""The lines a run ends with: held-out success at the start and the end of RL and the best (with
its RL step), where the run's files are, the command that evaluates it on the test split, and the
wall time. ``RunSummary`` (conf/callbacks/default.yaml) logs them once, on rank 0."""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def hydra_value(value) -> str:
    """``value`` in Hydra's override grammar (strings quoted where the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z_][\w./-]*", text)
    if plain and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _leaves(node: dict, prefix: str = "") -> dict:
    """Dotted key -> value of every leaf; a list (or an empty dict) is one leaf."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def suite_overrides(name: str, run_env: dict, base: dict) -> list[str]:
    """The overrides that make suite ``name``, which starts as ``base``, the run's env ``run_env``
    (both unresolved containers)."""
    run, default = _leaves(run_env), _leaves(base)

    def holds(key: str, keys) -> bool:  # key is a dict with some of keys under it
        return any(k.startswith(f"{key}.") for k in keys)

    out = []
    for key, value in run.items():
        if key in default:
            if default[key] != value:
                out.append(f"suites.{name}.{key}={hydra_value(value)}")
        elif not holds(key, default):  # an emptied dict is its keys removed (below)
            out.append(f"+suites.{name}.{key}={hydra_value(value)}")
    out += [f"~suites.{name}.{key}" for key in default if key not in run and not holds(key, run)]
    return out


def evaluate_command(
    run_dir: str, env_choice: str, run_env: dict, env_default: dict, suites: dict
) -> str:
    """``python evaluate.py run_dir=<run_dir>`` with the suite settings that evaluate the run's own
    env: ``suites`` are evaluate.py's default suites (name -> env config), ``env_default`` is the
    env option ``env_choice`` as composed without the run's overrides."""
    args = [f"run_dir={run_dir}"]
    args += [f"~suites.{name}" for name in suites if name != env_choice]
    if env_choice not in suites:
        args.append(f"+env@suites.{env_choice}={env_choice}")
    args += suite_overrides(env_choice, run_env, suites.get(env_choice) or env_default)
    return "python evaluate.py " + " ".join(shlex.quote(a) for a in args)


def evaluate_command_for_run(run_dir: str, shown_dir: str) -> str:
    """The test-split command of the Hydra run in ``run_dir``: the run's env (its recorded config
    and group choice) against evaluate.py's default suites, both composed with Hydra's compose
    API. Without a Hydra run to read, the plain command."""
    plain = f"python evaluate.py run_dir={shlex.quote(shown_dir)}"
    try:
        from hydra import compose
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig

        recorded = Path(run_dir) / ".hydra" / "config.yaml"
        if not (HydraConfig.initialized() and GlobalHydra.instance().is_initialized()):
            return plain
        if not recorded.is_file():
            return plain
        choice = HydraConfig.get().runtime.choices.get("env")
        run_env = OmegaConf.load(recorded).get("env")
        if choice is None or run_env is None:
            return plain
        evaluate_cfg = compose(config_name="evaluate")
        env_cfg = compose(
            config_name=HydraConfig.get().job.config_name, overrides=[f"env={choice}"]
        )
    except Exception as exc:  # a summary line is never worth a failed run
        log.debug("no evaluate.py suite settings for %s: %s", run_dir, exc)
        return plain
    raw = {"resolve": False}
    return evaluate_command(
        shown_dir,
        choice,
        OmegaConf.to_container(run_env, **raw),
        OmegaConf.to_container(env_cfg.env, **raw),
        OmegaConf.to_container(evaluate_cfg.get("suites") or {}, **raw),
    )


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it is inside it, else absolute."""
    path = Path(path).resolve()
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def duration(seconds: float) -> str:
    """``1h 02m 03s``, ``4m 05s``, ``6s``."""
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def success_line(validations: list[dict]) -> str:
    """Held-out success at the start of RL (the validation before fit), at its end (the last
    validation) and the best validation of RL (the first of equal ones, as best.ckpt keeps)."""
    if not validations:
        return "held-out success: no validation ran"
    start = next((v for v in validations if not v["fit"]), None)
    during = [v for v in validations if v["fit"]]
    parts = [
        f"{100 * start['success']:.1f}% at the start of RL"
        if start is not None
        else "not measured at the start of RL (validate_before_training=false)"
    ]
    if during:
        end = during[-1]
        best = max(during, key=lambda v: v["success"])  # max keeps the first of equal ones
        parts.append(f"{100 * end['success']:.1f}% at the end (RL step {end['rl_step']})")
        parts.append(f"best {100 * best['success']:.1f}% (RL step {best['rl_step']})")
    return "held-out success: " + ", ".join(parts)


class RunSummary(L.Callback):
    """At the end of fit, logs (rank 0, once) the run's outcome and where its outputs are.

    run_dir: the run directory (``paths.output_dir``). The validations seen (RL step, held-out
    success) are kept in checkpoints, so a resumed run reports its start of RL too.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.validations: list[dict] = []
        self._created = time.time()

    def on_validation_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        value = trainer.callback_metrics.get("val/success_rate")
        if trainer.sanity_checking or value is None:
            return
        self.validations.append(
            {
                "rl_step": int(getattr(pl_module, "rl_step", trainer.global_step)),
                "success": float(value),
                "fit": trainer.state.fn == TrainerFn.FITTING,
            }
        )

    def state_dict(self) -> dict:
        return {"validations": [dict(v) for v in self.validations]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations = [dict(v) for v in state_dict.get("validations", [])]

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # teardown, not on_fit_end: the export and the curve (on_fit_end) are written, and the
        # progress bar (torn down before this callback) has stopped, so these are the last lines
        if stage == "fit" and trainer.is_global_zero:
            log.info("%s", "\n".join(self.lines(trainer)))

    def lines(self, trainer) -> list[str]:
        from agentrl import console
        from agentrl.callbacks import ExportPolicy, LearningCurve, TrajectoryWriter

        started = console.job_started or self._created
        lines = [f"run finished in {duration(time.time() - started)}: {shown_path(self.run_dir)}"]
        lines.append("  " + success_line(self.validations))
        ckpt = trainer.checkpoint_callback
        folder = Path(getattr(ckpt, "dirpath", None) or Path(self.run_dir) / "checkpoints")
        names = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        if names:
            lines.append(f"  checkpoints: {shown_path(folder)} ({', '.join(names)})")
        export, curve, samples = (
            next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)
            for kind in (ExportPolicy, LearningCurve, TrajectoryWriter)
        )
        if export is not None and export.dirpath.is_dir():
            lines.append(f"  exported policy (transformers): {shown_path(export.dirpath)}")
        if curve is not None and Path(curve.filename).is_file():
            lines.append(f"  learning curve: {shown_path(curve.filename)}")
        if samples is not None and samples.dirpath.is_dir():
            files = ", ".join(sorted(p.name for p in samples.dirpath.glob("*.jsonl")))
            lines.append(f"  sample trajectories: {shown_path(samples.dirpath)} ({files})")
        command = evaluate_command_for_run(self.run_dir, shown_path(self.run_dir))
        lines.append(f"  next, the test split: {command}")
        return lines
