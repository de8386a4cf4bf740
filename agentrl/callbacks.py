"""Lightning callbacks: the model summary, sample trajectories (JSONL and the tracking loggers),
the exported policy, the learning curve."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from agentrl.distributed import fsdp_modules
from agentrl.plotting import plot_curve

log = logging.getLogger(__name__)


SAMPLE_COLUMNS = ["rl_step", "task_id", "prompt", "turns", "reward", "success"]


def turns_text(turns: list[dict]) -> str:
    """A trajectory record's turns as readable text: each action, then what came back."""
    parts = []
    for i, t in enumerate(turns, 1):
        parts.append(f"[turn {i}] action:\n{t['action']}")
        if t.get("observation"):
            parts.append(f"[turn {i}] observation:\n{t['observation']}")
        parts.append(f"[turn {i}] reward: {t['reward']}")
    return "\n".join(parts)


def samples_markdown(records: list[dict]) -> str:
    """The records as markdown for TensorBoard's text tab (one section per trajectory)."""
    out = []
    for r in records:
        out.append(
            f"**{r['task_id']}** reward {r['reward']} success {r['success']}\n\n"
            f"prompt:\n\n    " + str(r["prompt"]).replace("\n", "\n    ") + "\n\n"
            "    " + turns_text(r["turns"]).replace("\n", "\n    ")
        )
    return "\n\n---\n\n".join(out)


def tracker_kind(logger) -> str | None:
    """wandb, mlflow or tensorboard for those Lightning loggers (subclasses too), else None."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    for kind, cls in (("wandb", WandbLogger), ("mlflow", MLFlowLogger)):
        if isinstance(logger, cls):
            return kind
    return "tensorboard" if isinstance(logger, TensorBoardLogger) else None


class ModelSummary(LightningModelSummary):
    """Lightning's model summary, logged (so it is in the run's log file too), with the columns
    that mean something here: name, type, parameters. Lightning's FLOPs column counts a forward
    of ``example_input_array``, which an RL module has none of (a rollout is many forwards), so
    it read 0; its Mode column read "eval" for the frozen reference, which is in eval mode only
    while it computes."""

    COLUMNS = (" ", "Name", "Type", "Params", "Params per Device")

    @staticmethod
    def summarize(
        summary_data,
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict,
        total_flops: int,
        **summarize_kwargs,
    ) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import (
            get_formatted_model_size,
            get_human_readable_count,
        )

        columns = [(name, values) for name, values in summary_data if name in ModelSummary.COLUMNS]
        widths = [max(len(name), *(len(v) for v in values)) for name, values in columns]
        rows = [[name for name, _ in columns], *zip(*(values for _, values in columns))]
        lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        frozen = total_parameters - trainable_parameters
        trainable, frozen = (
            get_human_readable_count(n).strip() for n in (trainable_parameters, frozen)
        )
        lines.append(
            f"{trainable} trainable and {frozen} frozen parameters "
            f"({get_formatted_model_size(model_size)} MB)"
        )
        log.info("model:\n%s", "\n".join(lines))


class RLModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, keyed by RL step instead of optimizer step.

    Lightning skips a save when ``global_step`` (optimizer steps) has not moved since the last
    one; an RL step whose update was skipped (all advantages zero, a non-finite loss) moves no
    optimizer step but is still progress: data position, RNG and buffer changed. Lightning also
    writes last.ckpt only when the top-k checkpoint improved, which would leave a resumed run
    far behind. This saves at every validation of a new RL step: best.ckpt when the monitored
    value improved, last.ckpt always.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last_rl_step_saved = -1

    def _should_skip_saving_checkpoint(self, trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        rl_step = getattr(trainer.lightning_module, "rl_step", trainer.global_step)
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or rl_step == self._last_rl_step_saved
        )

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def save_at_stop(self, trainer) -> str:
        """last.ckpt at a stop (SIGTERM, SIGINT; agentrl.stopping): the state of the last
        completed RL step, unless last.ckpt already holds it. Returns its path."""
        rl_step = getattr(trainer.lightning_module, "rl_step", trainer.global_step)
        if rl_step != self._last_rl_step_saved or not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return self.last_model_path

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Write ``<file>.tmp`` then rename it over ``<file>``: a checkpoint is never half-written
        (Lightning's own save goes through a temporary file in the system temp dir, which is a
        copy, not a rename, when that is another filesystem). The previous ``last.ckpt`` is kept
        as ``last.ckpt.prev``, the fallback when last.ckpt turns out unreadable."""
        tmp = f"{filepath}.tmp"
        if trainer.is_global_zero:
            remove_path(Path(tmp))  # a leftover of a crash (a sharded checkpoint is a folder)
        trainer.strategy.barrier()
        super()._save_checkpoint(trainer, tmp)
        if trainer.is_global_zero:
            commit_checkpoint(
                Path(tmp), Path(filepath), keep_previous=Path(filepath).stem == "last"
            )
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath
        self._last_rl_step_saved = getattr(trainer.lightning_module, "rl_step", trainer.global_step)


PREVIOUS_SUFFIX = ".prev"


def remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def commit_checkpoint(tmp: Path, final: Path, keep_previous: bool) -> None:
    """Move a completely written checkpoint ``tmp`` (file, or FSDP's folder) to ``final``.

    A file is fsynced and renamed over ``final`` in one step; with ``keep_previous`` the old
    ``final`` stays reachable as ``<final>.prev`` (a hard link, so ``final`` never disappears).
    A folder cannot be renamed over a folder: the old one is moved to ``.prev`` (or removed)
    first, so for a moment only ``.prev`` exists, which resuming also looks for.
    """
    prev = final.with_name(final.name + PREVIOUS_SUFFIX)
    if tmp.is_file():
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if keep_previous and final.is_file():
            remove_path(prev)
            os.link(final, prev)
        os.replace(tmp, final)
    else:
        if keep_previous and final.exists():
            remove_path(prev)
            os.replace(final, prev)
        remove_path(final)
        os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


class TrajectoryWriter(L.Callback):
    """Every ``every_n_steps`` RL steps, append ``num_samples`` trajectories (prompt, turns, tool
    calls, observations, rewards) to ``dirpath/train.jsonl``; each validation to ``val.jsonl``.

    The same samples go to every tracking logger of the trainer: a ``wandb.Table`` under
    ``samples/train`` (``samples/val``) on W&B, the JSONL file as an artifact (folder ``samples``)
    on MLflow, a text summary on TensorBoard. With ``log_checkpoints`` the best checkpoint (else
    the last) is uploaded to W&B (a model artifact) and MLflow (folder ``checkpoints``) at the end
    of fit. A tracker call that raises never stops training: it is a warning, counted in
    ``tracker_errors`` (per tracker).
    """

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 10,
        num_samples: int = 8,
        to_trackers: bool = True,
        log_checkpoints: bool = False,
    ):
        if every_n_steps < 1:
            raise ValueError(f"callbacks.samples.every_n_steps must be >= 1, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.to_trackers = to_trackers
        self.log_checkpoints = log_checkpoints
        self.tracker_errors: dict[str, int] = {}

    @rank_zero_only
    def _write(self, name: str, step: int, trajs, trainer=None) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        records = [{"rl_step": step, **t.to_record()} for t in trajs[: self.num_samples]]
        path = self.dirpath / name
        with open(path, "a") as f:
            for rec in records:
                f.write(json.dumps(rec, default=str) + "\n")
        if trainer is not None and self.to_trackers and records:
            self._to_trackers(trainer, Path(name).stem, step, records, path)

    def _guarded(self, kind: str, what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # a tracker is never worth a failed run
            self.tracker_errors[kind] = self.tracker_errors.get(kind, 0) + 1
            log.warning(
                "could not log %s to %s (%s: %s); training goes on (%d such errors)",
                what,
                kind,
                type(exc).__name__,
                exc,
                self.tracker_errors[kind],
            )

    def _to_trackers(self, trainer, split: str, step: int, records: list[dict], path) -> None:
        key = f"samples/{split}"
        for lg in trainer.loggers:
            kind = tracker_kind(lg)
            if kind == "wandb":
                self._guarded(kind, key, lambda lg=lg: self._wandb_table(lg, key, records))
            elif kind == "mlflow":
                self._guarded(
                    kind,
                    key,
                    lambda lg=lg: lg.experiment.log_artifact(lg.run_id, str(path), "samples"),
                )
            elif kind == "tensorboard":
                self._guarded(
                    kind,
                    key,
                    lambda lg=lg: lg.experiment.add_text(key, samples_markdown(records), step),
                )

    @staticmethod
    def _wandb_table(logger, key: str, records: list[dict]) -> None:
        import wandb

        rows = [
            [
                r["rl_step"],
                r["task_id"],
                str(r["prompt"]),
                turns_text(r["turns"]),
                float(r["reward"]),
                r["success"],
            ]
            for r in records
        ]
        # no step: W&B keeps its own, and a table at an older step would be dropped
        logger.experiment.log({key: wandb.Table(columns=SAMPLE_COLUMNS, data=rows)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = pl_module.rl_step
        if step % self.every_n_steps == 0 or step == 1:
            self._write("train.jsonl", step, pl_module.last_samples, trainer)

    def on_validation_end(self, trainer, pl_module):
        # not on_validation_epoch_end: Lightning calls the callbacks' before the module's, which
        # stores this validation's trajectories (the file would get the previous validation's)
        if not trainer.sanity_checking:
            self._write("val.jsonl", pl_module.rl_step, pl_module.last_val_samples, trainer)

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        if not self.log_checkpoints:
            return
        path = checkpoint_to_upload(trainer)
        if path is None:
            log.warning("log_checkpoints: no checkpoint to upload")
            return
        for lg in trainer.loggers:
            kind = tracker_kind(lg)
            if kind == "wandb":
                self._guarded(kind, "the checkpoint", lambda lg=lg: _wandb_checkpoint(lg, path))
            elif kind == "mlflow":
                self._guarded(
                    kind,
                    "the checkpoint",
                    lambda lg=lg: lg.experiment.log_artifact(lg.run_id, str(path), "checkpoints"),
                )


def checkpoint_to_upload(trainer) -> Path | None:
    """The ModelCheckpoint's best checkpoint, else its last, else None."""
    ckpt = trainer.checkpoint_callback
    for p in (getattr(ckpt, "best_model_path", ""), getattr(ckpt, "last_model_path", "")):
        if p and Path(p).is_file():
            return Path(p)
    return None


def _wandb_checkpoint(logger, path: Path) -> None:
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(name=f"model-{run.id}", type="model", metadata={"file": path.name})
    artifact.add_file(str(path), name=path.name)
    run.log_artifact(artifact, aliases=["latest", path.stem])


class ExportPolicy(L.Callback):
    """At the end of fit, ``save_pretrained`` the policy (LoRA merged into the base) and the
    tokenizer into ``dirpath`` so it loads in plain transformers; with LoRA the adapter alone is
    also saved to ``dirpath/adapter``."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer, pl_module):
        policy = pl_module.policy
        state = None
        if fsdp_modules(policy):
            # FSDP: every rank takes part in gathering the full weights; rank 0 writes them
            if hasattr(policy, "merge_and_unload"):
                log.warning("export: a LoRA policy under FSDP is not exported; use the checkpoint")
                return
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(policy, options=options)
        if not trainer.is_global_zero:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        # the line below says it is done; transformers' "Writing model shards" bar would be the
        # run's last output otherwise
        with without_transformers_progress_bars():
            self._save(policy, pl_module.tokenizer, state)
        log.info("exported the policy to %s", self.dirpath)

    def _save(self, policy, tokenizer, state: dict | None) -> None:
        if state is not None:
            policy.save_pretrained(self.dirpath, state_dict=state)
        else:
            if hasattr(policy, "merge_and_unload"):
                policy.save_pretrained(self.dirpath / "adapter")
                policy = copy.deepcopy(policy).merge_and_unload()
            policy.save_pretrained(self.dirpath)
        tokenizer.save_pretrained(self.dirpath)


@contextlib.contextmanager
def without_transformers_progress_bars():
    """transformers' (and huggingface_hub's) progress bars off inside the block, as they were
    after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


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
