"""The LightningModule that alternates rollout and policy optimization.

One training step (one batch of tasks) runs the named phases, each timed into ``perf/<phase>_s``:

    rollout     the policy acts in ``group_size`` episodes per task      -> Trajectories
    score       rewards (never raise; failures are counted and skipped)  -> trajectory.reward
    advantages  the algorithm turns rewards into advantages: per episode [N], or per token [N, T-1]
                (``algorithm.credit`` turn/transition, or PPO's GAE over the value head's values)
    update      epochs x minibatches of the algorithm's loss, manual optimization, grad clipping
    sync        new weights reach the rollout engine
    log         namespaced metrics and sample trajectories
"""

from __future__ import annotations

import contextlib
import copy
import random
import resource
import time

import lightning as L
import numpy as np
import torch

from agentrl import distributed as D
from agentrl import stopping
from agentrl import value as V
from agentrl.algorithms import functional as F
from agentrl.batching import TokenBatch, collate, model_logprobs_chunked
from agentrl.buffer import ReplayBuffer
from agentrl.rewards.base import score_batch
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.runner import EpisodeRunner
from agentrl.types import Trajectory


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class AgentRLModule(L.LightningModule):
    """Owns the policy (with its LoRA adapter, if any), the reference, the value head (``critic``,
    when the algorithm ``needs_values``), the algorithm, the engine, the env suite, the reward and
    the buffer. Hyper-parameters come from ``conf/module/rl.yaml``.
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
        buffer: ReplayBuffer,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_seq_len: int = 512,
        observation_role: str = "user",
        update_micro_batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        self.automatic_optimization = False
        if temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0, got {temperature}")
        self.policy = policy
        self.tokenizer = tokenizer
        self.suite = suite
        self.reward = reward
        self.algorithm = algorithm
        self.engine = engine
        self.optimizer_factory = optimizer
        self.buffer = buffer
        self.temperature = temperature
        self.top_p = top_p
        self.update_micro_batch_size = update_micro_batch_size
        self.seed = seed
        self.chat = ChatFormat(tokenizer, observation_role)
        # a suite may produce its trajectories itself (env=external: agent programs via the gateway)
        self.runner = (
            suite.make_runner(engine, self.chat, max_seq_len)
            if hasattr(suite, "make_runner")
            else EpisodeRunner(engine, self.chat, suite, max_seq_len)
        )
        self.reference = None
        self.critic = None
        if getattr(algorithm, "needs_values", False):
            self.critic = V.build_critic(policy, algorithm.value_head)
        self.rl_step = 0
        self.counters = {"failed_episodes": 0, "skipped_updates": 0}
        self.last_samples: list[Trajectory] = []
        self.last_val_samples: list[Trajectory] = []
        self._val: list[Trajectory] = []
        self._val_reward_failures = 0
        self._val_gathered = contextlib.ExitStack()

    # ----------------------------------------------------------------- setup
    def configure_model(self) -> None:
        if self.algorithm.needs_reference and self.reference is None and not self._has_adapter():
            # frozen; in eval mode only while it computes (_reference_logprobs), so that
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

    def _has_adapter(self) -> bool:
        return hasattr(self.policy, "disable_adapter")

    def _trainable(self) -> list[torch.nn.Parameter]:
        """The policy's trainable parameters, then the critic's (if any)."""
        modules = [self.policy] if self.critic is None else [self.policy, self.critic]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def configure_optimizers(self):
        return self.optimizer_factory(self._trainable())

    # ----------------------------------------------------------------- train
    def training_step(self, batch, batch_idx):
        if getattr(self.algorithm, "preference", False):
            from agentrl.preference import preference_step  # DPO: pairs instead of advantages

            return preference_step(self, batch)
        step, tasks = batch["step"], batch["tasks"]
        timer = Timer()
        stopping.entered("rollout", step + 1)
        with timer("rollout"):
            trajs = self._rollout(tasks, step)
        # a stop signal abandons the rollout (the runner stops between turns); once it is
        # complete, the step runs to its end
        stopping.check("rollout", step + 1)
        with timer("score"):
            counts = score_batch(self.reward, trajs)
            kept = [t for t in trajs if t.status != "failed"]
            scored = self._score_logprobs(kept)
        with timer("advantages"):
            kept, scored, adv_stats = self._advantages(kept, scored)
        with timer("update"):
            stopping.entered("update", step + 1)
            self.buffer.add(kept, step)
            stats = self._update(self.buffer.drain(step), scored)
            if scored is not None:
                stats.update(self._logprob_stats(scored))
        with timer("sync"):
            self.engine.sync(self.policy)
        with timer("log"):
            self.rl_step = step + 1
            self.last_samples = trajs
            metrics = self._train_metrics(trajs, counts, {**stats, **adv_stats})
            n_local = len(trajs)
        metrics.update({f"perf/{k}_s": v for k, v in timer.seconds.items()})
        metrics["perf/rollout_tokens_per_s"] = sum(t.num_generated for t in trajs) / max(
            timer.seconds["rollout"], 1e-9
        )
        metrics["perf/update_tokens_per_s"] = stats.pop("_upd_tokens", 0) / max(
            timer.seconds["update"], 1e-9
        )
        metrics["perf/peak_rss_gb"] = peak_rss_gb()
        self._log_train(D.reduce_metrics(metrics, n_local))

    def _generator(
        self, step: int, salt: int, device: str | torch.device = "cpu"
    ) -> torch.Generator:
        """A generator seeded by (seed, RL step, rank, salt): resume needs no RNG bookkeeping."""
        g = torch.Generator(device=device)
        g.manual_seed(hash((self.seed, step, self.global_rank, salt)) % (2**63))
        return g

    def _rollout(self, tasks, step: int) -> list[Trajectory]:
        group = self.algorithm.group_size
        expanded = [t for t in tasks for _ in range(group)]
        groups = [i for i in range(len(tasks)) for _ in range(group)]
        params = self.runner.sampling(self.temperature, self.top_p, greedy=False)
        self.policy.eval()
        # sampling happens on the model's device, so its generator lives there too
        with D.gathered(self.policy):
            gen = self._generator(step, 0, self.device)
            trajs = self.runner.run(expanded, groups, params, gen)
        self.policy.train()
        return trajs

    def _score_logprobs(self, trajs: list[Trajectory]) -> dict | None:
        """The trainer's (old) and the reference's log-probs, and the old values when there is a
        critic, computed once per step."""
        with D.gathered(self.policy, self.reference, self.critic):
            if not trajs:
                return None
            batch = collate(trajs, self.tokenizer.pad_token_id).to(self.device)
            chunk, values, old = self.update_micro_batch_size, None, None
            if self.critic is None and not self._old_from_update():
                old = model_logprobs_chunked(self.policy, batch, chunk, self.temperature)
            elif self.critic is not None:
                old, values = V.forward_chunked(
                    self.policy, self.critic, batch, chunk, self.temperature
                )
            return {
                "batch": batch,
                "old": old,
                "ref": self._reference_logprobs(batch),
                "values": values,
            }

    def _old_from_update(self) -> bool:
        """Whether the update's own forward gives the old log-probs: one epoch of one minibatch
        (every micro-batch's forward runs before the only optimizer step, so the weights are the
        rollout's), no critic, and the KL not in the reward (which needs them before the update).
        The score phase then skips that forward: one forward of the batch fewer per step."""
        a = self.algorithm
        return (
            a.epochs == 1
            and a.minibatches == 1
            and self.critic is None
            and getattr(a, "kl_mode", "loss") != "reward"
        )

    def _logprob_stats(self, scored: dict) -> dict[str, float]:
        """The engine's behaviour log-probs vs the trainer's (old), every step (updated or not),
        and the old policy's sequence KL to the reference."""
        batch, old, ref = scored["batch"], scored["old"], scored["ref"]
        mask = batch.loss_mask
        stats = {
            "rollout/logprob_diff": float(
                ((old - batch.behaviour_logprobs).abs() * mask).sum() / mask.sum().clamp(min=1)
            )
        }
        if ref is not None:
            kl = F.sequence_kl(old, ref, mask, self.algorithm.kl_estimator)
            stats["loss/kl_ref_seq"] = float(kl.mean())
        return stats

    def _fill_old(self, scored: dict, filled: torch.Tensor) -> None:
        """Old log-probs of the rows the update did not reach (it was skipped: the weights are
        still the rollout's)."""
        missing = (~filled).nonzero().flatten()
        if not len(missing):
            return
        with D.gathered(self.policy):
            sub = scored["batch"].select(missing)
            lp = model_logprobs_chunked(
                self.policy, sub, self.update_micro_batch_size, self.temperature
            )
        scored["old"][missing] = lp

    def _advantages(self, trajs: list[Trajectory], scored: dict | None):
        """Rewards (minus KL when kl_mode=reward) -> advantages, [N] or [N, T-1] aligned with
        ``batch.loss_mask`` (``algorithm.credit``; GAE with a critic); drops uninformative groups
        when the algorithm samples dynamically. Returns the kept trajectories, their tensors, stats."""
        if not trajs:
            return trajs, scored, {}
        batch, old, ref = scored["batch"], scored["old"], scored["ref"]
        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32, device=self.device)
        groups = torch.tensor([t.group for t in trajs], device=self.device)
        stats = {}
        if ref is not None and old is not None:
            rewards = self.algorithm.kl_in_reward(rewards, old, ref, batch.loss_mask)
        keep = self.algorithm.keep_mask(rewards, groups)
        stats["rollout/dropped_groups"] = float(torch.unique(groups[~keep]).numel())
        idx = keep.nonzero().flatten()
        kept = [trajs[i] for i in idx.tolist()]
        scored = select_scored(scored, idx)
        rewards, groups = rewards[keep], groups[keep]
        if self.critic is None:
            width = scored["batch"].loss_mask.shape[1]
            scored["advantages"] = self.algorithm.token_advantages(kept, rewards, groups, width)
        else:
            adv, scored["returns"], value_stats = self.algorithm.gae_advantages(
                kept, rewards, scored
            )
            scored["advantages"] = adv
            stats.update(value_stats)
        return kept, scored, stats

    def _reference_logprobs(self, batch: TokenBatch) -> torch.Tensor | None:
        if not self.algorithm.needs_reference:
            return None
        chunk = self.update_micro_batch_size
        if self.reference is not None:
            with eval_mode(self.reference):
                return model_logprobs_chunked(self.reference, batch, chunk, self.temperature)
        with self.policy.disable_adapter():
            return model_logprobs_chunked(self.policy, batch, chunk, self.temperature)

    def _update(self, trajs: list[Trajectory], scored: dict | None) -> dict:
        stats: dict = {"_upd_tokens": 0}
        filled = None
        if scored is not None and scored["old"] is None:
            # the old log-probs come from the update's forward (_old_from_update)
            scored["old"] = torch.zeros_like(scored["batch"].behaviour_logprobs)
            filled = torch.zeros(len(trajs), dtype=torch.bool, device=self.device)
            scored["_old_filled"] = filled
        try:
            return self._update_epochs(trajs, scored, stats)
        finally:
            if filled is not None:
                scored.pop("_old_filled")
                self._fill_old(scored, filled)

    def _update_epochs(self, trajs: list[Trajectory], scored: dict | None, stats: dict) -> dict:
        # under DDP/FSDP every rank takes the same decision (their gradients meet in backward)
        if not D.any_rank(bool(trajs) and bool((scored["advantages"] != 0).any())):
            stats["loss/skipped_zero_adv"] = 1.0
            return stats
        opt = self.optimizers()
        gen = self._generator(self.rl_step, 1)
        acc: dict[str, list[float]] = {}
        for _ in range(self.algorithm.epochs):
            perm = torch.randperm(len(trajs), generator=gen).to(self.device)
            mbs = list(perm.chunk(self.algorithm.minibatches)) if trajs else []
            if D.is_distributed():
                mbs += [perm[:0]] * (int(D.all_reduce(len(mbs), "max")) - len(mbs))
            for mb in mbs:
                for k, v in self._minibatch_step(opt, scored, mb).items():
                    acc.setdefault(k, []).append(v)
                if len(mb):
                    stats["_upd_tokens"] += int(scored["batch"].attention_mask[mb].sum())
        stats.update({k: float(np.mean(v)) for k, v in acc.items()})
        if self.algorithm.needs_reference:
            if scored is not None and "_old_filled" in scored:
                self._fill_old(scored, scored["_old_filled"])
            kl = self._global_kl(trajs, scored)
            self.algorithm.kl_controller.update(kl, n_steps=int(D.all_reduce(len(trajs))))
            stats["loss/kl_coef"] = float(self.algorithm.kl_controller.value)
        return stats

    def _global_kl(self, trajs: list[Trajectory], scored: dict | None) -> float:
        """Mean sequence KL to the reference over the episodes of all ranks."""
        kl = (
            F.sequence_kl(
                scored["old"], scored["ref"], scored["batch"].loss_mask, self.algorithm.kl_estimator
            )
            if trajs
            else torch.zeros(0)
        )
        if not D.is_distributed():
            return float(kl.mean())
        total, n = D.all_reduce(float(kl.sum())), D.all_reduce(len(trajs))
        return float(total / n.clamp(min=1))

    def _minibatch_step(self, opt, scored: dict, mb: torch.Tensor) -> dict[str, float]:
        # scored is None on a rank left without episodes (it still joins the collectives)
        batch, old, ref, advantages = (
            (scored[k] for k in ("batch", "old", "ref", "advantages")) if scored else [None] * 4
        )
        agg = self.algorithm.aggregation
        total = (
            F.aggregation_weight(batch.loss_mask[mb], agg)
            if len(mb)
            else torch.zeros((), device=self.device)
        )
        # DDP and FSDP average gradients over ranks: weigh by the share of the global minibatch
        world = D.world_size()
        total = (D.all_reduce(total).to(total) if world > 1 else total).clamp(min=1e-9)
        opt.zero_grad()
        out: dict[str, float] = {}
        finite = True
        micros = list(mb.split(self.update_micro_batch_size)) if len(mb) else []
        for micro in D.pad_micro_batches(micros) if world > 1 else micros:
            if not finite and world == 1:
                break
            if micro is None or not finite:
                # keeps this rank's backward passes in step with the other ranks'
                self._zero_pass(batch)
                continue
            sub, rows = self._micro_batch(batch, micro)
            weight = world * float(F.aggregation_weight(sub.loss_mask, agg) / total)
            logp, entropy, values = V.forward(self.policy, self.critic, sub, self.temperature)
            if "_old_filled" in scored:  # before this minibatch's (the only) optimizer step
                old[micro, : logp.shape[1]] = logp.detach()
                scored["_old_filled"][micro] = True
            loss, parts = self.algorithm.loss(
                logp,
                rows(old),
                rows(ref),
                rows(advantages),
                sub.loss_mask,
                behaviour_logprobs=sub.behaviour_logprobs,
                **self._value_inputs(scored, rows, values),
            )
            if not torch.isfinite(loss):
                finite = False
                self.manual_backward(
                    (logp.sum() if values is None else logp.sum() + values.sum()) * 0.0
                )
                continue
            self.manual_backward(loss * weight)
            m = sub.loss_mask
            parts["entropy"] = (entropy.detach() * m).sum() / m.sum().clamp(min=1)
            for k, v in parts.items():
                out[f"loss/{k}"] = out.get(f"loss/{k}", 0.0) + float(v) * weight
        params = self._trainable()
        finite = D.all_ranks(finite) if world > 1 else finite
        norm = (
            D.full_value(torch.nn.utils.clip_grad_norm_(params, self.algorithm.max_grad_norm))
            if finite
            else None
        )
        if not finite or not torch.isfinite(norm):
            # a non-finite loss or gradient is skipped and counted, never applied
            opt.zero_grad()
            self.counters["skipped_updates"] += 1
            return {"loss/skipped_nonfinite": 1.0}
        opt.step()
        out["loss/grad_norm"] = float(norm)
        out["loss/skipped_nonfinite"] = 0.0
        return out

    def _micro_batch(self, batch: TokenBatch, micro: torch.Tensor):
        """The episodes ``micro`` of ``batch``, cut to their own longest episode (the batch is
        padded to the step's longest: a short micro-batch would compute padding), and a function
        that takes the same rows and columns of a per-step tensor ([N] or [N, T-1]; None stays
        None). Not cut under seq_mean_token_sum_norm without max_completion_length, whose
        divisor is the padded width."""
        sub = batch.select(micro)
        fixed_norm = self.algorithm.aggregation == "seq_mean_token_sum_norm" and (
            getattr(self.algorithm, "max_completion_length", None) is None
        )
        width = sub.input_ids.shape[1] if fixed_norm else sub.used_width()
        if width < sub.input_ids.shape[1]:
            sub = sub.narrow(width)

        def rows(x: torch.Tensor | None) -> torch.Tensor | None:
            if x is None:
                return None
            return x[micro] if x.dim() == 1 else x[micro, : width - 1]

        return sub, rows

    def _zero_pass(self, batch: TokenBatch | None) -> None:
        """A forward and backward that adds nothing to the gradients (weight 0)."""
        if batch is None:
            pad = self.tokenizer.pad_token_id or 0
            ids = torch.full((1, 2), pad, dtype=torch.long, device=self.device)
            zeros = torch.zeros((1, 1), device=self.device)
            batch = TokenBatch(ids, torch.ones_like(ids), zeros, zeros)
        sub = batch.select(torch.arange(1, device=batch.input_ids.device))
        logp, _, values = V.forward(self.policy, self.critic, sub, self.temperature)
        self.manual_backward((logp.sum() if values is None else logp.sum() + values.sum()) * 0.0)

    @staticmethod
    def _value_inputs(scored: dict, rows, values) -> dict:
        """The critic's loss inputs of one micro-batch ({} without a critic); ``rows`` picks the
        micro-batch's rows and columns of a per-step tensor."""
        if values is None:
            return {}
        return {
            "values": values,
            "old_values": rows(scored["values"]),
            "returns": rows(scored["returns"]),
        }

    # ----------------------------------------------------------------- metrics
    def _train_metrics(
        self, trajs: list[Trajectory], counts: dict, stats: dict
    ) -> dict[str, float]:
        ok = [t for t in trajs if t.status != "failed"]
        failed = len(trajs) - len(ok)
        self.counters["failed_episodes"] += failed
        m = episode_metrics(ok, prefix="rollout")  # no reward_mean when every reward failed
        if "rollout/success_rate" in m:
            m["env/success_rate"] = m.pop("rollout/success_rate")
        for name in sorted({k for t in ok for k in t.reward_components}):
            m[f"reward/{name}"] = float(np.mean([t.reward_components.get(name, 0.0) for t in ok]))
        # counters an env reports in info["metrics"] (e.g. codegen's sandbox failures): step sums
        for name in sorted({k for t in trajs for x in t.turns for k in x.info.get("metrics", {})}):
            m[f"env/{name}"] = float(
                sum(x.info.get("metrics", {}).get(name, 0.0) for t in trajs for x in t.turns)
            )
        m["rollout/failed_episodes"] = float(failed)
        m["rollout/failed_episodes_total"] = float(self.counters["failed_episodes"])
        m["rollout/reward_errors"] = float(counts["reward_errors"] + counts["reward_nonfinite"])
        # the same count under validation's name for it (val/reward_failures)
        m["rollout/reward_failures"] = m["rollout/reward_errors"]
        # the reward's own per-batch statistics (namespaced by the reward, e.g. reward/api_retries)
        m.update({k: float(v) for k, v in counts.items() if "/" in k})
        m["loss/skipped_updates_total"] = float(self.counters["skipped_updates"])
        m.update({k: v for k, v in stats.items() if not k.startswith("_")})
        m.update(self.buffer.stats())
        if hasattr(self.suite, "metrics"):  # env-specific counts (tool faults, ...), env/<name>
            m.update(self.suite.metrics(trajs))
        m["train/rl_step"] = float(self.rl_step)
        m.update(self.runner.metrics() if hasattr(self.runner, "metrics") else {})
        return m

    def _log_train(self, metrics: dict[str, float]) -> None:
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
        self.last_val_samples = trajs

    # ----------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["agentrl"] = {
            "rl_step": self.rl_step,
            "counters": dict(self.counters),
            "buffer": self.buffer.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "rng": rng_state(),
        }
        if hasattr(self.reward, "state_dict"):
            checkpoint["agentrl"]["reward"] = self.reward.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("agentrl")
        if state is None:
            raise ValueError("this checkpoint was not written by agentrl (no 'agentrl' section)")
        self.rl_step = int(state["rl_step"])
        self.counters.update(state["counters"])
        self.buffer.load_state_dict(state["buffer"])
        if "algorithm" in state:
            self.algorithm.load_state_dict(state["algorithm"])
        set_rng_state(state["rng"])
        if "reward" in state and hasattr(self.reward, "load_state_dict"):
            self.reward.load_state_dict(state["reward"])
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and dm.stream is not None:
            dm.stream.position = self.rl_step


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode (dropout off) inside the block, its previous mode after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def select_scored(scored: dict, idx: torch.Tensor) -> dict:
    """The rows ``idx`` of every tensor of the score phase (None entries stay None)."""
    out = {}
    for k, v in scored.items():
        out[k] = v if v is None else v.select(idx) if isinstance(v, TokenBatch) else v[idx]
    return out


def rng_state() -> dict:
    """Python, numpy and torch RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def episode_metrics(trajs: list[Trajectory], prefix: str) -> dict[str, float]:
    """Means over episodes: reward, success, turns, generated tokens, invalid actions; none (an
    empty dict) without episodes, so that a step whose rewards all failed logs no nan."""
    if not trajs:  # none (e.g. every reward failed): no means, rather than nan ones
        return {}
    turns = [len(t.turns) for t in trajs]
    invalid = sum(1 for t in trajs for x in t.turns if x.info.get("invalid"))
    return {
        f"{prefix}/reward_mean": float(np.mean([t.reward for t in trajs])),
        f"{prefix}/reward_std": float(np.std([t.reward for t in trajs])),
        f"{prefix}/success_rate": float(np.mean([bool(t.success) for t in trajs])),
        f"{prefix}/turns_mean": float(np.mean(turns)),
        f"{prefix}/generated_tokens_mean": float(np.mean([t.num_generated for t in trajs])),
        f"{prefix}/invalid_action_rate": invalid / max(sum(turns), 1),
        f"{prefix}/truncated_rate": float(np.mean([t.status == "truncated" for t in trajs])),
    }
