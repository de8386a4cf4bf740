"""The supervised warm start: a stage of the run, before RL, on the env's oracle demonstrations.

Demonstrations are the oracle's actions replayed through the env, so their tokens are laid out
exactly as rollouts are (the same ChatFormat), and the loss is taken on the action tokens only.
The result is cached under ``cache_dir/<key>``, the key being a hash of everything that shapes
it (model, env, episode length, every warm-start setting but ``enabled`` and ``cache_dir``), so
the next run with the same settings reuses it. Each entry also records a hash of what was
actually trained on (the demonstrations' tokens, the model, the warm-start settings): a run whose
config differs only in ways the demonstrations do not see (a new env option left at its default,
a timeout) finds that twin and copies its weights instead of training again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import logging
import math
import os
import random
import shutil
import signal
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from omegaconf import DictConfig, OmegaConf

from agentrl import stopping
from agentrl.batching import collate
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.runner import EpisodeRunner
from agentrl.utils.cache import cache_key
from agentrl.utils.instantiate import instantiate, to_container
from agentrl.warmstart_stop import StopFiles

log = logging.getLogger(__name__)


def warmstart_identity(cfg: DictConfig) -> dict:
    """What a run's warm-start cache key hashes besides the stage's own settings: the model, the
    env the demonstrations come from, the chat role of observations and the episode length. An
    env with a task source suite (env=external) is warm-started on the source alone, so the
    source stands for it. Training, the reward model's ``init: warmstart`` and the evaluation
    baseline all look the cache up through this one function."""
    source = cfg.env.get("tasks")
    env = source if isinstance(source, DictConfig) and "_target_" in source else cfg.env
    return {
        "model": to_container(cfg.model),
        "env": to_container(env),
        "role": cfg.rollout.observation_role,
        # demonstrations are cut where an episode would outgrow it, as rollouts are
        "max_seq_len": cfg.rollout.max_seq_len,
    }


class SFTModule(L.LightningModule):
    """Next-token cross-entropy on action tokens (loss_mask 1), mean over those tokens."""

    def __init__(
        self,
        policy,
        lr: float,
        weight_decay: float,
        steps: int,
        warmup_steps: int,
        min_lr_ratio: float,
    ):
        super().__init__()
        self.policy = policy
        self.lr = lr
        self.weight_decay = weight_decay
        self.steps = steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        # the optimizer and scheduler states of a warm start stopped part-way (None: fresh)
        self.resume_state: dict | None = None

    def on_fit_start(self) -> None:
        # a pretrained model loads in eval mode; what trains is in train mode
        self.policy.train()

    def training_step(self, batch, batch_idx):
        ids, attn, mask = batch
        width = int(attn.sum(-1).max())  # drop the padding columns this batch does not need
        ids, attn, mask = ids[:, :width], attn[:, :width], mask[:, : width - 1]
        logits = self.policy(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none"
        )
        loss = (nll * mask.reshape(-1)).sum() / mask.sum().clamp(min=1)
        self.log("warmstart/loss", loss, prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        if self.resume_state is not None:
            opt.load_state_dict(self.resume_state["optimizer"])
            sched.load_state_dict(self.resume_state["scheduler"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )


def warn_long_actions(chat, suite, actions: list[str]) -> int:
    """Warn when demonstrated actions take more tokens (end of turn included) than the policy may
    generate in a turn (``env.max_action_tokens``): imitation would teach actions that rollouts
    cut off. Returns how many are too long."""
    limit = getattr(suite, "max_action_tokens", None)
    if not limit or not actions:
        return 0
    lengths = [len(chat.action_ids(a)) for a in actions]
    over = [n for n in lengths if n > limit]
    if over:
        log.warning(
            "warm start: %d of %d demonstrated actions are longer than env.max_action_tokens=%d "
            "tokens (longest %d, e.g. %r); rollouts cut them off; raise env.max_action_tokens",
            len(over),
            len(actions),
            limit,
            max(over),
            actions[lengths.index(max(over))],
        )
    return len(over)


@contextlib.contextmanager
def without_device_info():
    """Lightning logs which accelerators are available ("GPU available: ...") for every Trainer
    it builds; the run's RL trainer, built before the warm start's, has logged the same lines.
    The warm start's are left out (Lightning's documented way: its logger's level)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class WarmStart:
    """enabled: run the stage at all; steps, batch_size, lr, weight_decay: the SFT optimisation;
    num_demos: how many train tasks get a demonstration; cache_dir: where results are kept;
    precision: Lightning's precision of the SFT trainer (null: the default, 32-true;
    "bf16-mixed": bf16 autocast). A model held in a low-precision dtype (``model.dtype:
    bfloat16``) is trained on float32 master weights and cast back afterwards, so small updates
    are not rounded away."""

    def __init__(
        self,
        enabled: bool = True,
        steps: int = 800,
        batch_size: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 30,
        min_lr_ratio: float = 0.1,
        num_demos: int = 2000,
        cache_dir: str = ".cache/warmstart",
        seed: int = 0,
        precision: str | None = None,
    ):
        if precision not in (None, "32-true", "bf16-mixed"):
            raise ValueError(
                f"warmstart.precision must be null, 32-true or bf16-mixed, got {precision!r}"
            )
        if enabled:
            for name, value in [
                ("steps", steps),
                ("batch_size", batch_size),
                ("num_demos", num_demos),
            ]:
                if value < 1:
                    raise ValueError(f"warmstart.{name} must be >= 1, got {value}")
            if not lr > 0:
                raise ValueError(f"warmstart.lr must be > 0, got {lr}")
        self.enabled = enabled
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.num_demos = num_demos
        self.cache_dir = cache_dir
        self.seed = seed
        self.precision = precision

    # the constructor's settings that do not change the trained weights; every other one is in
    # the cache key (a new setting is in it unless it is named here)
    NOT_IN_KEY = ("enabled", "cache_dir")

    def _settings(self) -> dict:
        names = inspect.signature(WarmStart.__init__).parameters
        out = {k: getattr(self, k) for k in names if k not in ("self", *self.NOT_IN_KEY)}
        out["precision"] = self.precision or "32-true"  # null is Lightning's default, 32-true
        return out

    def key(self, identity: dict) -> str:
        """A hash of the settings that shape the warm-started weights (``identity``: what
        ``warmstart_identity`` gives for the run)."""
        return cache_key({"warmstart": self._settings(), **identity})

    def folder(self, identity: dict) -> Path:
        """Where the result for ``identity`` is cached (``model.pt`` in it once trained)."""
        return Path(self.cache_dir) / self.key(identity)

    def content_key(self, identity: dict, batch) -> str:
        """A hash of what training sees: the demonstrations' tokens and loss masks, the model
        (``identity["model"]``) and the warm-start settings; the env config is left out."""
        h = hashlib.sha256()
        head = {"warmstart": self._settings(), "model": identity.get("model")}
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        for t in (batch.input_ids, batch.attention_mask, batch.loss_mask):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def demonstrations(self, runner: EpisodeRunner, suite):
        tasks = suite.tasks("train")[: self.num_demos]
        rng = random.Random(self.seed)
        plans = [(t, suite.oracle(t, rng)) for t in tasks]
        warn_long_actions(runner.chat, suite, [a for _, acts in plans for a in acts])
        return [runner.demonstration(t, actions) for t, actions in plans]

    def run(
        self,
        policy,
        tokenizer,
        runner: EpisodeRunner,
        suite,
        identity: dict,
        trainer_kwargs: dict,
        run_dir: str | None = None,
    ):
        """Train ``policy`` in place (or load the cached result). Returns the cache folder used.
        ``run_dir``: the run's directory, through which the ranks of a run agree on a stop
        (agentrl/warmstart_stop.py; None: a process alone)."""
        if not self.enabled:
            return None
        folder = self.folder(identity)
        folder.parent.mkdir(parents=True, exist_ok=True)
        stop = StopFiles(run_dir, folder.name) if run_dir else None
        # one process trains, the others (DDP ranks under srun, a sweep's jobs) wait and reuse
        with open(folder.parent / f"{folder.name}.lock", "w") as lock:
            _acquire(lock, stop)
            if stop is not None:
                _stop_with_the_computing_rank(stop)
            args = (policy, tokenizer, runner, suite, folder, identity, trainer_kwargs, stop)
            folder = self._run(*args)
        if stop is not None:
            stop.clear()
        return folder

    def _run(self, policy, tokenizer, runner, suite, folder: Path, identity, trainer_kwargs, stop):
        weights = folder / "model.pt"
        if weights.exists():
            log.info("warm start: reusing %s", folder)
            policy.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return folder
        demos = self.demonstrations(runner, suite)
        batch = collate(demos, tokenizer.pad_token_id)
        content = self.content_key(identity, batch)
        twin = self._twin(folder.parent, content)
        if twin is not None:
            log.info(
                "warm start: %s trained on the same demonstrations, model and settings; "
                "reusing its weights for %s",
                twin,
                folder,
            )
            state = torch.load(twin / "model.pt", map_location="cpu", weights_only=True)
            policy.load_state_dict(state)
            self._save(policy, folder, content)
            return folder
        # a rank that waited for the lock while the one training was stopped stops too
        _check(stop, 0)
        solved = sum(bool(d.success) for d in demos) / len(demos)
        log.info(
            "warm start: %d demonstrations (%.0f%% correct), %d steps",
            len(demos),
            100 * solved,
            self.steps,
        )
        partial = folder.parent / f"{folder.name}.partial.ckpt"
        trainer = self._train(policy, batch, trainer_kwargs, partial, content, stop)
        if trainer.global_rank == 0:
            self._save(policy, folder, content)
            partial.unlink(missing_ok=True)
        trainer.strategy.barrier()
        return folder

    @staticmethod
    def _twin(cache: Path, content: str) -> Path | None:
        """A cached entry whose recorded content key is ``content`` (None if there is none).
        Half-written entries (``.tmp-*``, another process's or a crashed one's) are not entries."""
        for entry in sorted(cache.glob("*/content.key")):
            if entry.parent.name.startswith("."):
                continue
            try:
                same = entry.read_text().strip() == content
            except OSError:
                continue
            if same and (entry.parent / "model.pt").is_file():
                return entry.parent
        return None

    def _train(self, policy, batch, trainer_kwargs: dict, partial: Path, content: str, stop):
        """SFT for ``steps`` optimizer steps, or the rest of them after the ``partial`` progress
        a stopped warm start saved (weights, optimizer, schedule, RNG: the same result)."""
        data = torch.utils.data.TensorDataset(
            batch.input_ids, batch.attention_mask, batch.loss_mask
        )
        g = torch.Generator().manual_seed(self.seed)
        # every step's examples, drawn up front (the same draws as sampling them lazily)
        order = list(
            torch.utils.data.RandomSampler(
                data, replacement=True, num_samples=self.steps * self.batch_size, generator=g
            )
        )
        resume = load_partial(partial, content)
        done = resume["step"] if resume else 0
        if resume:
            log.info("warm start: resuming at step %d of %d (%s)", done, self.steps, partial)
        loader = torch.utils.data.DataLoader(
            data, batch_size=self.batch_size, sampler=order[done * self.batch_size :]
        )
        kwargs = dict(trainer_kwargs)
        stops = _StopBetweenSteps(partial, content, stop)
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), stops]
        if self.precision is not None:
            kwargs["precision"] = self.precision
        dtype = next(policy.parameters()).dtype
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            with without_device_info():
                # the loader holds the remaining steps' batches: one epoch (the progress bar
                # reads Epoch 0/0)
                trainer = L.Trainer(max_epochs=1, max_steps=self.steps - done, **kwargs)
            # float32 master weights for the optimisation of a low-precision model
            sft = SFTModule(
                policy.float(),
                self.lr,
                self.weight_decay,
                self.steps,
                self.warmup_steps,
                self.min_lr_ratio,
            )
            if resume:
                policy.load_state_dict(resume["policy"])
                sft.resume_state = resume
            trainer.fit(sft, loader)
        policy.to(dtype)
        return trainer

    @staticmethod
    def _save(policy, folder: Path, content: str) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        torch.save(policy.state_dict(), tmp / "model.pt")
        (tmp / "content.key").write_text(content + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)


def load_partial(path: Path, content: str) -> dict | None:
    """The progress a stopped warm start saved at ``path``, if it is of this training (the same
    content key) and readable; else None (and it is started afresh)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("warm start: ignoring %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    return state if state.get("content") == content else None


def _acquire(lock, stop: StopFiles | None) -> None:
    """The cache entry's lock; while another process holds it, a stop signal to this one asks
    the computing rank of this run to stop (``stop``'s request)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    log.info("warm start: waiting for %s (another process is computing it)", lock.name)
    if stop is None:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return
    with stopping.on_signal(stop.request):
        fcntl.flock(lock, fcntl.LOCK_EX)


def _stop_with_the_computing_rank(stop: StopFiles) -> None:
    """A rank that got the lock after the computing rank of its run stopped stops at the same
    point, with the same line (what that rank saved)."""
    record = stop.stop_record()
    if record is None:
        return
    signum = stopping.STATE.signum or signal.Signals[record["signal"]]
    stopping.request(signum)
    if record.get("saved"):
        stopping.STATE.saved = tuple(record["saved"])
    raise stopping.StopRequested(signum, "warm start", int(record["step"]))


def _check(stop: StopFiles | None, step: int) -> None:
    """A safe point of the computing rank: a stop (its own signal, or a waiting rank's request)
    is recorded for the run's other ranks, then raised."""
    if stop is not None and not stopping.requested():
        signum = stop.requested()
        if signum is not None:
            stopping.request(signum)
    if stopping.requested():
        if stop is not None:
            stop.stopped(stopping.STATE.signum, step, stopping.STATE.saved)
        stopping.check("warm start", step, sync=False)


class _StopBetweenSteps(L.Callback):
    """The warm start's safe points: after each optimizer step, a stop signal (or a waiting
    rank's request, read from ``stop``) saves the progress to ``partial`` (written then renamed)
    and stops (agentrl.stopping)."""

    def __init__(self, partial: Path, content: str, stop: StopFiles | None = None):
        self.partial = partial
        self.content = content
        self.stop = stop

    def on_train_start(self, trainer, pl_module) -> None:
        stopping.claim(trainer)  # Lightning installed its SIGTERM handler for this fit
        resume = pl_module.resume_state
        if resume is not None:  # after the data loader drew its seed, as the first run did
            torch.set_rng_state(resume["rng"])
            if resume.get("cuda_rng"):
                torch.cuda.set_rng_state_all(resume["cuda_rng"])

    def _done(self, trainer, pl_module) -> int:
        resume = pl_module.resume_state
        return (resume["step"] if resume else 0) + trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        stopping.entered("warmstart", self._done(trainer, pl_module) + 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not stopping.requested() and self.stop is not None:
            signum = self.stop.requested()
            if signum is not None:
                stopping.request(signum)
        if not stopping.requested():
            return
        step = self._done(trainer, pl_module)
        opt = trainer.optimizers[0]
        state = {
            "content": self.content,
            "step": step,
            "policy": pl_module.policy.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }
        tmp = self.partial.with_name(self.partial.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.partial)
        stopping.STATE.saved = (f"warm-start step {step}", str(self.partial))
        _check(self.stop, step)


def stage_parts(cfg: DictConfig, suite) -> dict:
    """What ``warm_start`` needs, built from ``cfg`` for a model that is not the run's policy
    (the reward model's backbone, the policy that samples reward-model pairs)."""
    return {
        "engine": instantiate(cfg.rollout.engine, "rollout.engine"),
        "suite": suite,
        "warmstart": instantiate(cfg.warmstart, "warmstart"),
    }


def warm_start(cfg: DictConfig, parts: dict, policy, tokenizer) -> Path | None:
    """The warm-start stage of a run: train ``policy`` in place on the demonstrations of
    ``parts["suite"]`` (or load the cached result; ``parts`` also holds the run's ``engine``
    and ``warmstart``). One plain process on ``cfg.trainer.accelerator``. Returns the cache
    folder used (None when the warm start is off)."""
    chat = ChatFormat(tokenizer, cfg.rollout.observation_role)
    runner = EpisodeRunner(parts["engine"], chat, parts["suite"], cfg.rollout.max_seq_len)
    bar = (cfg.get("callbacks") or {}).get("rich_progress")
    kwargs = {
        "accelerator": cfg.trainer.accelerator,
        "devices": 1,
        # one plain process, whatever the launcher (SLURM's tasks are the RL trainer's business)
        "plugins": [LightningEnvironment()],
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True),
        "callbacks": [instantiate(bar)] if bar else [],
    }
    identity = warmstart_identity(cfg)
    run_dir = OmegaConf.select(cfg, "paths.output_dir")
    return parts["warmstart"].run(
        policy, tokenizer, runner, parts["suite"], identity, kwargs, run_dir
    )
