"""The LightningModule that alternates rollout and policy optimization.

It owns the models and the components and runs one training step per batch of tasks: the step
``algorithm.step`` names (``STEPS``), a sibling function that uses the module's public methods
only: ``rl`` (``agentrl/rl_step.py``: rollout, score, advantages, update, sync, log) or
``preference`` (``agentrl/preference.py``: pairs instead of advantages). Both update the weights
through the module's ``PolicyUpdater`` (``agentrl/updater.py``).
"""

from __future__ import annotations

import contextlib
import copy
import time

import lightning as L
import torch

from agentrl import distributed as D
from agentrl import stopping
from agentrl import value as V
from agentrl.batching import TokenBatch
from agentrl.pipeline import PIPELINES, RolloutPipeline
from agentrl.preference import preference_step
from agentrl.rewards.base import as_reward, score_batch
from agentrl.rl_step import rl_step
from agentrl.rng import rng_state, set_rng_state
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.runner import EpisodeRunner
from agentrl.types import Trajectory
from agentrl.updater import PolicyUpdater

# algorithm.step -> the training step that runs the algorithm
STEPS = {"rl": rl_step, "preference": preference_step}


class AgentRLModule(L.LightningModule):
    """Owns the policy (with its LoRA adapter, if any), the reference, the value head (``critic``,
    when the algorithm ``needs_values``), the algorithm, the engine, the env suite, the reward
    and the updater. Hyper-parameters come from ``conf/module/rl.yaml``.
    """

    def __init__(
        self,
        policy,
        tokenizer,
        suite,
        reward,
        algorithm,
        engine,
        optimizer,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_seq_len: int = 512,
        observation_role: str = "user",
        update_micro_batch_size: int = 64,
        seed: int = 0,
        pipeline: str = "sync",
        max_staleness: int = 1,
        max_reuse: int = 1,
        correction: str = "tis",
        correction_cap: float = 2.0,
    ):
        super().__init__()
        self.automatic_optimization = False
        if temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0, got {temperature}")
        if algorithm.step not in STEPS:
            raise ValueError(
                f"algorithm.step must be one of {tuple(STEPS)}, got {algorithm.step!r}"
            )
        self.step_fn = STEPS[algorithm.step]
        self.policy = policy
        self.tokenizer = tokenizer
        self.suite = suite
        self.reward = as_reward(reward)
        self.algorithm = algorithm
        self.engine = engine
        self.optimizer_factory = optimizer
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.observation_role = observation_role
        self.max_seq_len = max_seq_len
        self.chat = ChatFormat(tokenizer, observation_role)
        self.runner = self._runner(engine, self.chat)
        self.pipeline = self._pipeline(
            pipeline, algorithm.step, max_staleness, max_reuse, correction, correction_cap
        )
        self.reference = None
        self.critic = None
        if algorithm.needs_values:
            self.critic = V.build_critic(policy, algorithm.value_head)
        self.rl_step = 0
        self.counters = {"failed_episodes": 0, "skipped_updates": 0}
        self.updater = PolicyUpdater(
            policy,
            self.critic,
            algorithm,
            update_micro_batch_size,
            temperature,
            tokenizer.pad_token_id,
            backward=self.manual_backward,
            device=lambda: self.device,
            counters=self.counters,
        )
        self.last_samples: list[Trajectory] = []
        self.last_val_samples: list[Trajectory] = []
        self._val: list[Trajectory] = []
        self._val_reward_failures = 0
        self._val_gathered = contextlib.ExitStack()

    def _runner(self, engine, chat: ChatFormat):
        # a suite may produce its trajectories itself (env=external: agent programs via the gateway)
        if hasattr(self.suite, "make_runner"):
            return self.suite.make_runner(engine, chat, self.max_seq_len)
        return EpisodeRunner(engine, chat, self.suite, self.max_seq_len)

    def make_runner(self, engine, tokenizer):
        """A runner of the module's suite with ``engine`` (the overlap pipeline's own)."""
        return self._runner(engine, ChatFormat(tokenizer, self.observation_role))

    def _pipeline(self, mode, step, max_staleness, max_reuse, correction, correction_cap):
        """None for rollout.pipeline=sync; the overlap pipeline (agentrl/pipeline.py) else."""
        if mode not in PIPELINES:
            raise ValueError(f"rollout.pipeline must be one of {PIPELINES}, got {mode!r}")
        if mode == "sync":
            return None
        if step != "rl":
            raise ValueError(
                f"rollout.pipeline=overlap needs an RL algorithm (algorithm.step=rl), not "
                f"algorithm.step={step}"
            )
        pipe = RolloutPipeline(max_staleness, max_reuse, correction, correction_cap)
        if correction == "tis" and getattr(self.algorithm, "tis_cap", None) is None:
            self.algorithm.tis_cap = correction_cap
        return pipe

    @property
    def train_runner(self):
        """The runner of the training rollouts (the overlap pipeline's, when there is one)."""
        return self.runner if self.pipeline is None else self.pipeline.runner

    def next_tasks(self, step: int):
        """This rank's tasks of RL step ``step`` (0-based); None after the last step."""
        stream = self.trainer.datamodule.stream
        return stream.batch(step)["tasks"] if step < stream.steps else None

    # ----------------------------------------------------------------- setup
    def configure_model(self) -> None:
        if self.algorithm.needs_reference and self.reference is None and not self._has_adapter():
            # frozen; in eval mode only while it computes (reference_logprobs), so that
            # Lightning's check for modules left in eval mode at the start of fit stays meaningful
            self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        if self._device_mesh is not None and not D.fsdp_modules(self.policy):
            # trainer=fsdp (Lightning's ModelParallelStrategy): FSDP2 shards what trains
            critic = [self.critic.backbone, self.critic.head] if self.critic is not None else []
            for m in (self.policy, self.reference, *critic):
                if m is not None:  # each is called on its own, so each is a root
                    D.shard(m, self._device_mesh)
        self.engine.bind(self.policy, self.tokenizer)

    def on_fit_start(self) -> None:
        # what trains is in train mode (a pretrained model loads in eval mode); the reference
        # switches to eval mode where it runs
        for m in (self.policy, self.critic):
            if m is not None:
                m.train()
        # a resumed run restores its weights after configure_model: the engine gets them here
        self.engine.sync(self.policy)
        if self.pipeline is not None and self.pipeline.module is None:
            if D.fsdp_modules(self.policy):
                raise ValueError(
                    "rollout.pipeline=overlap does not support trainer=fsdp (its rollout thread "
                    "holds a whole copy of the policy); use trainer=ddp or rollout.pipeline=sync"
                )
            self.pipeline.bind(self)  # on the model's device by now

    def teardown(self, stage: str) -> None:
        if self.pipeline is not None:
            self.pipeline.close()

    def _has_adapter(self) -> bool:
        return hasattr(self.policy, "disable_adapter")

    def configure_optimizers(self):
        return self.optimizer_factory(self.updater.trainable())

    # ----------------------------------------------------------------- train
    def training_step(self, batch, batch_idx):
        return self.step_fn(self, batch)

    def generator(
        self, step: int, salt: int, device: str | torch.device = "cpu"
    ) -> torch.Generator:
        """A generator seeded by (seed, RL step, rank, salt): resume needs no RNG bookkeeping."""
        g = torch.Generator(device=device)
        g.manual_seed(hash((self.seed, step, self.global_rank, salt)) % (2**63))
        return g

    def rollout(self, tasks, step: int) -> list[Trajectory]:
        """``group_size`` sampled episodes per task (task i's are group i), seeded by the step."""
        return self._rollout(tasks, step)

    def _rollout(self, tasks, step: int) -> list[Trajectory]:
        # the sampling itself (tests/test_distributed.py overrides it to seed per task)
        group = self.algorithm.group_size
        expanded = [t for t in tasks for _ in range(group)]
        groups = [i for i in range(len(tasks)) for _ in range(group)]
        params = self.runner.sampling(self.temperature, self.top_p, greedy=False)
        self.policy.eval()
        # sampling happens on the model's device, so its generator lives there too
        with D.gathered(self.policy):
            gen = self.generator(step, 0, self.device)
            trajs = self.runner.run(expanded, groups, params, gen)
        self.policy.train()
        return trajs

    def reference_logprobs(self, batch: TokenBatch) -> torch.Tensor | None:
        """[N, T-1] the reference's log-probs (the frozen copy, or the adapter disabled); None
        when the algorithm needs no reference."""
        if not self.algorithm.needs_reference:
            return None
        if self.reference is not None:
            with eval_mode(self.reference):
                return self.updater.logprobs(self.reference, batch)
        with self.policy.disable_adapter():
            return self.updater.logprobs(self.policy, batch)

    def log_train(self, metrics: dict[str, float]) -> None:
        """A step's metric row to the loggers, reward and success to the progress bar."""
        bar = {"reward": "rollout/reward_mean", "success": "env/success_rate"}
        for short, key in bar.items():
            if key in metrics:
                self.log(short, metrics[key], prog_bar=True, logger=False, on_step=True)
        # straight to the loggers: Lightning's step results would repeat a key logged at an
        # earlier step (e.g. loss/policy of the last real update) in rows of steps without it
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    # ----------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val = []
        self._val_reward_failures = 0
        self._val_start = time.perf_counter()
        self._val_wait_s = 0.0
        if self.pipeline is not None:
            # the rollout in flight first (it may share the env's workers or the engine), then
            # the engine gets the newest weights (a push for vllm; the hf engine has them)
            self.pipeline.settle()
            self._val_wait_s = time.perf_counter() - self._val_start
            self.engine.sync(self.policy)
        # FSDP: full parameters for the whole validation (ranks run different numbers of forwards)
        self._val_gathered.enter_context(D.gathered(self.policy))

    def validation_step(self, tasks, batch_idx):
        stopping.entered("validation", self.rl_step)
        if stopping.requested():
            return  # the rest of a validation cut short is skipped (it is redone on resume)
        params = self.runner.sampling(self.temperature, 1.0, greedy=True)
        trajs = self.runner.run(list(tasks), list(range(len(tasks))), params)
        counts = score_batch(self.reward, trajs)
        self._val_reward_failures += counts["reward_errors"] + counts["reward_nonfinite"]
        self._val.extend(trajs)

    def on_validation_epoch_end(self) -> None:
        self._val_gathered.close()
        stopping.check("validation", self.rl_step)
        trajs = self._val
        # the reward mean is over the episodes that have one: a failed episode (its env step or
        # its reward raised) is left out and counted, as in training; success counts every episode
        ok = [t for t in trajs if t.status != "failed"]
        stats = [
            len(trajs),
            sum(bool(t.success) for t in trajs),
            len(ok),
            sum(t.reward for t in ok),
            self._val_reward_failures,
        ]
        n, wins, n_ok, rsum, reward_failures = (
            self.all_gather(torch.tensor(float(x), device=self.device)).sum() for x in stats
        )
        self.log("val/failed_episodes", n - n_ok, sync_dist=False)
        self.log("val/reward_failures", reward_failures, sync_dist=False)
        if n_ok > 0:  # no mean (rather than nan) when no episode has a reward
            self.log("val/reward_mean", rsum / n_ok, sync_dist=False)
        n = n.clamp(min=1)
        self.log("val/success_rate", wins / n, prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log("train/rl_step", float(self.rl_step))
        # this rank's wall clock for the validation, and the part of it spent waiting for the
        # overlap pipeline's rollout in flight (0 in sync mode): a step's perf/ timers leave both out
        self.log("perf/val_s", time.perf_counter() - self._val_start, sync_dist=False)
        self.log("perf/val_wait_s", self._val_wait_s, sync_dist=False)
        self.last_val_samples = trajs

    # ----------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["agentrl"] = {
            "rl_step": self.rl_step,
            "counters": dict(self.counters),
            "algorithm": self.algorithm.state_dict(),
            "rng": rng_state(),
            "reward": self.reward.state_dict(),
        }
        if self.pipeline is not None and self.pipeline.module is not None:
            # every rank's pipeline (each rank its own), in rank order
            checkpoint["agentrl"]["pipeline"] = D.gather_objects(self.pipeline.state_dict())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("agentrl")
        if state is None:
            raise ValueError("this checkpoint was not written by agentrl (no 'agentrl' section)")
        self.rl_step = int(state["rl_step"])
        self.counters.update(state["counters"])
        # state["buffer"] (checkpoints before the replay buffer left the loop) is ignored: it
        # was always empty at a checkpoint (the overlap pipeline's buffer is state["pipeline"])
        if "algorithm" in state:
            self.algorithm.load_state_dict(state["algorithm"])
        set_rng_state(state["rng"])
        if "reward" in state:
            self.reward.load_state_dict(state["reward"])
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and dm.stream is not None:
            dm.stream.position = self.rl_step
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None and "pipeline" in state:
            states = state["pipeline"]
            if len(states) != D.world_size():
                raise ValueError(
                    f"this overlap checkpoint holds {len(states)} ranks' pipelines; it resumes "
                    f"with {len(states)} processes, not {D.world_size()}"
                )
            pipeline.load_state_dict(
                states[self.global_rank], lambda step: dm.stream.batch(step)["tasks"]
            )


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode (dropout off) inside the block, its previous mode after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
