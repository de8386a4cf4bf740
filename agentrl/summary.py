"""The lines a run ends with: held-out success at the start and the end of RL and the best (with
its RL step), where the run's files are, the command that evaluates it on the test split (on the
run's own env and settings: evaluate.py reads them from the run dir), and the wall time. ``RunSummary`` (conf/callbacks/default.yaml) logs them once, on rank 0."""

from __future__ import annotations

import logging
import os
import shlex
import time
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


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
        # evaluate.py evaluates a run dir on the run's own env (agentrl/evaluation/run_env.py)
        command = f"python evaluate.py run_dir={shlex.quote(shown_path(self.run_dir))}"
        lines.append(f"  next, the test split: {command}")
        return lines
