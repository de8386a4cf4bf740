"""Lightning callbacks: sample trajectories as JSONL, the exported policy, the learning curve."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from agentrl.plotting import plot_curve

log = logging.getLogger(__name__)


class TrajectoryWriter(L.Callback):
    """Every ``every_n_steps`` RL steps, append ``num_samples`` trajectories (prompt, turns, tool
    calls, observations, rewards) to ``dirpath/train.jsonl``; each validation to ``val.jsonl``."""

    def __init__(self, dirpath: str, every_n_steps: int = 10, num_samples: int = 8):
        if every_n_steps < 1:
            raise ValueError(f"callbacks.samples.every_n_steps must be >= 1, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples

    @rank_zero_only
    def _write(self, name: str, step: int, trajs) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / name, "a") as f:
            for t in trajs[: self.num_samples]:
                f.write(json.dumps({"rl_step": step, **t.to_record()}, default=str) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = pl_module.rl_step
        if step % self.every_n_steps == 0 or step == 1:
            self._write("train.jsonl", step, pl_module.last_samples)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._write("val.jsonl", pl_module.rl_step, pl_module.last_val_samples)


class ExportPolicy(L.Callback):
    """At the end of fit, ``save_pretrained`` the policy (LoRA merged into the base) and the
    tokenizer into ``dirpath`` so it loads in plain transformers; with LoRA the adapter alone is
    also saved to ``dirpath/adapter``."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        policy = pl_module.policy
        self.dirpath.mkdir(parents=True, exist_ok=True)
        if hasattr(policy, "merge_and_unload"):
            policy.save_pretrained(self.dirpath / "adapter")
            policy = copy.deepcopy(policy).merge_and_unload()
        policy.save_pretrained(self.dirpath)
        pl_module.tokenizer.save_pretrained(self.dirpath)
        log.info("exported the policy to %s", self.dirpath)


class LearningCurve(L.Callback):
    """At the end of fit, plot the CSV logger's metrics into ``filename`` (a PNG)."""

    def __init__(self, filename: str):
        self.filename = filename

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        csv_loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
        if not csv_loggers:
            return
        csv_loggers[0].save()
        metrics = Path(csv_loggers[0].log_dir) / "metrics.csv"
        if metrics.exists():
            plot_curve(metrics, self.filename)
