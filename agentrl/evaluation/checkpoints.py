"""Checkpoints along a run, named by RL step, for ``python evaluate.py run_dir=...``.

Lightning's ModelCheckpoint counts optimizer steps (``global_step``), not RL steps, and skips a
save when no optimizer step was taken since its last one (an RL step whose update was skipped,
e.g. all advantages zero, takes none). This callback saves at every validation of ``fit`` whose
RL step is a multiple of ``every_n_steps``, whatever the optimizer did, to
``dirpath/step<rl_step>.ckpt``. Add it to a run with::

    +callbacks.every_validation._target_=agentrl.evaluation.checkpoints.RLStepCheckpoint \
    +callbacks.every_validation.dirpath='${paths.output_dir}/checkpoints'
"""

from __future__ import annotations

from pathlib import Path

import lightning as L


class RLStepCheckpoint(L.Callback):
    """dirpath: where ``step<N>.ckpt`` files go; every_n_steps: keep a checkpoint at the
    validations whose RL step is a multiple of this (validations happen every
    ``trainer.val_check_interval`` RL steps); weights_only: leave out the optimizer and loop
    states (enough for evaluation, a fraction of the size; resuming uses last.ckpt)."""

    def __init__(self, dirpath: str, every_n_steps: int = 40, weights_only: bool = True):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.weights_only = weights_only

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        step = int(pl_module.rl_step)
        if step % self.every_n_steps:
            return
        # every rank calls it (FSDP gathers shards); Lightning writes from rank 0
        trainer.save_checkpoint(self.dirpath / f"step{step}.ckpt", weights_only=self.weights_only)
