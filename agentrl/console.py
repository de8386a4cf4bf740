"""What a run prints: each log line once, through the job's logging config, and no warning a user
cannot act on.

``conf/hydra/default.yaml`` installs ``Console`` as a Hydra callback and ``DropLightningTips`` as
a filter of the job's logging config. Every warning filtered here names the reason it cannot be
acted on; a warning that can be acted on is fixed where it comes from instead.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# when the Hydra job started (time.time()); the run summary's wall time counts from it
job_started: float | None = None

# the loggers Lightning gives a console handler of its own when it is imported
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class DropLightningTips(logging.Filter):
    """Drops Lightning's advertisements ("💡 Tip: ... try installing litlogger / litmodels"),
    logged once per Trainer whatever the loggers are; Lightning has no setting that turns them
    off (Lightning-AI/pytorch-lightning#21294)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def route_lightning_logging() -> None:
    """Lightning's log lines go through the job's handlers only (Hydra's console and the run's log
    file, on the root logger).

    At import Lightning attaches a console handler of its own to the ``lightning`` logger (and to
    ``lightning.pytorch``/``lightning.fabric`` when the root logger has none yet), which printed
    every Lightning line a second time beside the job's. Those loggers keep no handler of their
    own and propagate. Nothing changes when the job's logging gives the root logger no handler
    (``hydra/job_logging=none``): Lightning's own handlers are then the only output."""
    import lightning  # noqa: F401  (its import-time handlers exist from here on)

    if not logging.getLogger().handlers:
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def filter_unactionable_warnings() -> None:
    """Warnings raised inside a library about the library's own code: nothing a run's config or
    code can change. Each is matched by message, category and the module that raises it."""
    # Lightning 2.6's CombinedLoader builds torch's LeafSpec, which torch >= 2.10 deprecates;
    # Lightning's own code, reported upstream (Lightning-AI/pytorch-lightning#21326)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # PEFT's get_peft_model reads transformers' deprecated `is_gradient_checkpointing` alias on
    # every LoRA model (peft/peft_model.py): PEFT's code, nothing a run can change
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
    )
    # Lightning's model summary knows no size for mixed precision and counts 32 bits a parameter,
    # which is right: under autocast the weights stay float32 (only the matmuls run in 16 bits)
    warnings.filterwarnings(
        "ignore",
        message=r"Precision (bf16|16)-mixed is not supported by the model summary",
    )
    # Lightning warns whenever an `srun` binary is on PATH and the process was not started by it;
    # the hint is for a process inside a SLURM allocation (salloc) that forgot srun. Outside any
    # allocation (no SLURM_JOB_ID: a login node, a workstation with SLURM installed) there is
    # nothing to act on; inside one the warning stays.
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings(
            "ignore",
            message=r"The `srun` command is available on your system but is not used",
        )


class Console(Callback):
    """Hydra callback: at the start of each job (after Hydra configured its logging), route
    Lightning's logging, filter the warnings nobody can act on, and note the start time."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global job_started
        job_started = time.time()
        route_lightning_logging()
        filter_unactionable_warnings()
