"""Compose -> check -> instantiate -> (warm start) -> fit. ``launch.py`` calls ``main``.

Everything cheap is built and checked first (env, reward, algorithm, data, optimizer, model
spec), so a bad value stops the run with one clear message before any model is loaded.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from agentrl import config_check, stopping
from agentrl.envs.base import close_suite
from agentrl.loggers import truncate_metrics
from agentrl.models import qlora
from agentrl.models.factory import ModelLoadError, apply_adapter
from agentrl.rewards.base import RewardUnavailable
from agentrl.rewards.training import reward_model_stage, train_reward_model
from agentrl.utils.instantiate import ConfigError, instantiate, to_container
from agentrl.warmstart import warm_start

log = logging.getLogger("agentrl")


# resuming tries these in <run dir>/checkpoints, in order: the first readable one is used
RESUME_CANDIDATES = ("last.ckpt", "last.ckpt.prev", "best.ckpt")


def resolve_checkpoint(cfg: DictConfig) -> str | None:
    """``ckpt_path`` if given (it must exist and be readable); else the run directory's
    ``last.ckpt`` if any. An unreadable last.ckpt (a corrupt or truncated file) is reported and
    the previous good one (``last.ckpt.prev``, then ``best.ckpt``) is used instead."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.exists():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist")
        return str(path)
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    for name in RESUME_CANDIDATES:
        path = folder / name
        if not path.exists():
            continue
        try:
            checkpoint_rl_step(str(path))
        except ConfigError as exc:
            log.error("%s; trying an earlier checkpoint", exc)
            continue
        return str(path)
    return None


def _checkpoint_meta(path: str) -> dict:
    """A checkpoint's contents, memory-mapped (the weights are not read). A sharded (FSDP)
    checkpoint is a folder whose ``meta.pt`` holds everything but the tensors."""
    try:
        meta = Path(path) / "meta.pt" if Path(path).is_dir() else Path(path)
        state = torch.load(meta, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
            "pass ckpt_path= to an intact one (best.ckpt is kept beside it)"
        ) from exc
    if "agentrl" not in state:
        raise ConfigError(f"checkpoint {path} was not written by agentrl")
    return state


def checkpoint_rl_step(path: str) -> int:
    """The RL step a checkpoint was taken at."""
    return int(_checkpoint_meta(path)["agentrl"]["rl_step"])


def extend_finished_run(trainer: L.Trainer, path: str, steps: int) -> None:
    """Let a finished run go on when ``data.steps`` was raised since.

    A run's RL steps are one Lightning epoch; the checkpoint of a finished run records that
    epoch as completed, so Lightning, restored from it, stops at once (``max_epochs`` reached).
    When the checkpoint is at an earlier RL step than ``steps``, the trainer is given one more
    epoch, in which the task stream resumes at the checkpoint's step (the module sets its
    position) and runs to ``steps``."""
    state = _checkpoint_meta(path)
    rl_step = int(state["agentrl"]["rl_step"])
    loop = state.get("loops", {}).get("fit_loop", {})
    epochs = loop.get("epoch_progress", {}).get("current", {})
    done = int(epochs.get("completed", 0))
    # saved at the epoch's last batch (its final validation) before the epoch was marked done:
    # Lightning's restore marks it done
    if loop.get("epoch_loop.batch_progress", {}).get("is_last_batch") and epochs.get(
        "processed", 0
    ) < epochs.get("started", 0):
        done += 1
    max_epochs = trainer.fit_loop.max_epochs
    if rl_step >= steps:
        log.info("the checkpoint is at RL step %d of data.steps=%d: nothing left", rl_step, steps)
    elif max_epochs is not None and 0 <= max_epochs <= done:
        trainer.fit_loop.max_epochs = done + 1
        log.info("extending a finished run from RL step %d to data.steps=%d", rl_step, steps)


def check_config(cfg: DictConfig) -> None:
    """Every value of the composed config against agentrl/config_check.py's rules (ranges, types,
    keys the constructors take, settings that must agree), then what needs the machine (QLoRA's
    CUDA). Nothing is built or loaded before this passes."""
    config_check.validate(cfg)
    reason = qlora.check(cfg.get("adapter"))
    if reason:
        raise ConfigError(reason)


def build_components(cfg: DictConfig) -> dict:
    """The light objects, each from its config group; nothing here loads a model."""
    check_config(cfg)
    parts = {
        "suite": instantiate(cfg.env, "env"),
        "reward": instantiate(cfg.reward, "reward"),
        "algorithm": instantiate(cfg.algorithm, "algorithm"),
        "engine": instantiate(cfg.rollout.engine, "rollout.engine"),
        "data": instantiate(cfg.data, "data"),
        "optimizer": instantiate(cfg.optimizer, "optimizer"),
        "warmstart": instantiate(cfg.warmstart, "warmstart"),
        "model_spec": instantiate(cfg.model, "model"),
    }
    parts["model_spec"].check()
    return parts


def build_trainer(cfg: DictConfig) -> L.Trainer:
    loggers = [instantiate(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c]
    callbacks = [
        instantiate(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c
    ]
    # not a config choice: SIGTERM/SIGINT stop at a safe point with a checkpoint (stopping.py)
    callbacks.append(stopping.StopAtSafePoints())
    return instantiate(cfg.trainer, "trainer", logger=loggers or False, callbacks=callbacks)


def run(cfg: DictConfig) -> dict[str, float]:
    """One training run. Returns the final logged metrics (floats)."""
    L.seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.get("num_threads") or torch.get_num_threads())
    parts = build_components(cfg)
    try:
        with stopping.handle_signals():
            return fit(cfg, parts)
    finally:
        # the env's servers and browsers go on every exit path (an exception, Ctrl-C included)
        close_suite(parts["suite"])


def fit(cfg: DictConfig, parts: dict) -> dict[str, float]:
    """Model, warm start, module and trainer.fit for the built components."""
    # the reward-model stage: reward=learned (alone or in a composite) gets its trained model
    # (configured, cached, or trained now) before anything else is loaded
    reward_model_stage(cfg, parts["reward"], parts["suite"])
    trainer = build_trainer(cfg)
    ckpt = resolve_checkpoint(cfg)
    policy, tokenizer = parts["model_spec"].load()
    if ckpt is None:
        warm_start(cfg, parts, policy, tokenizer)
    else:
        step = checkpoint_rl_step(ckpt)
        dropped = truncate_metrics(cfg.paths.output_dir, step)
        log.info("resuming from %s (RL step %d; %d later metric rows dropped)", ckpt, step, dropped)
        extend_finished_run(trainer, ckpt, cfg.data.steps)
    policy = apply_adapter(policy, cfg.adapter)
    module = instantiate(cfg.module, "module")(
        policy=policy,
        tokenizer=tokenizer,
        suite=parts["suite"],
        reward=parts["reward"],
        algorithm=parts["algorithm"],
        engine=parts["engine"],
        optimizer=parts["optimizer"],
    )
    data = parts["data"]
    data.bind(parts["suite"])
    for lg in trainer.loggers:
        lg.log_hyperparams(to_container(cfg))
    if ckpt is None and cfg.get("validate_before_training", True):
        trainer.validate(module, datamodule=data, verbose=False)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def main(cfg: DictConfig) -> dict[str, float]:
    """Entry for launch.py: a configuration or model error is one line on stderr and exit 2;
    a reward service that stays down under ``on_failure: stop`` is one line and exit 3."""
    try:
        # before seeding (seed=abc) and before either mode builds anything
        check_config(cfg)
        if cfg.get("mode", "rl") == "reward_model":
            return train_reward_model(cfg)
        return run(cfg)
    except (ConfigError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RewardUnavailable as exc:
        print(f"stopped: {exc} (the last checkpoint is intact; rerun to resume)", file=sys.stderr)
        sys.exit(3)
    except stopping.StopRequested as exc:
        stopping.report(exc, cfg.paths.output_dir)
        stopping.wait_for_ranks()
        sys.exit(exc.exit_code)


def print_config(cfg: DictConfig) -> None:
    print(OmegaConf.to_yaml(cfg, resolve=False))
