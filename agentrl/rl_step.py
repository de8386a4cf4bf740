"""The training step of RL algorithms (GRPO family, RLOO, REINFORCE++, PPO): ``algorithm.step: rl``.

The phases, each timed into ``perf/<phase>_s``:

    rollout     the policy acts in ``group_size`` episodes per task      -> Trajectories
    score       rewards (never raise; failures are counted and skipped), then the old, reference
                log-probs and old values computed once                  -> ScoredBatch
    advantages  ``algorithm.advantages`` turns rewards into advantages: per episode [N], or per
                token [N, T-1] (``algorithm.credit``, or PPO's GAE over the value head's values)
    update      epochs x minibatches of the algorithm's loss through the module's PolicyUpdater
    sync        new weights reach the rollout engine
    log         namespaced metrics and sample trajectories
"""

from __future__ import annotations

import numpy as np
import torch

from agentrl import distributed as D
from agentrl import stopping
from agentrl.algorithms import functional as F
from agentrl.batching import collate
from agentrl.rewards.base import score_batch
from agentrl.step_data import ScoredBatch
from agentrl.step_metrics import Timer, peak_rss_gb, train_metrics
from agentrl.types import Trajectory


def rl_step(module, batch) -> None:
    """One RL step of ``module`` (an ``AgentRLModule``) on ``batch`` ({"step", "tasks"})."""
    step, tasks = batch["step"], batch["tasks"]
    pipe = module.pipeline  # None: rollout.pipeline=sync
    timer = Timer()
    stopping.entered("rollout", step + 1)
    with timer("rollout"):
        # overlap: the batch generated while the last step updated (agentrl/pipeline.py)
        job = pipe.obtain(step, tasks) if pipe is not None else None
        trajs = module.rollout(tasks, step) if pipe is None else None
    # a stop signal abandons the rollout (the runner stops between turns); once it is
    # complete, the step runs to its end
    stopping.check("rollout", step + 1)
    fresh = trajs
    if pipe is not None:  # the step's batch to the buffer, the next rollout started
        fresh, trajs = pipe.commit(job, module.next_tasks(step + 1))
    with timer("score"):
        counts = score_batch(module.reward, fresh)
        kept = [t for t in trajs if t.status != "failed"]
        scored = score(module, kept)
        pipe_stats = pipe.correct(scored) if pipe is not None and scored is not None else {}
    with timer("advantages"):
        kept, scored, adv_stats = advantages(module, kept, scored)
    with timer("update"):
        stopping.entered("update", step + 1)
        stats = update(module, kept, scored)
        if scored is not None:
            stats.update(logprob_stats(module.algorithm, scored))
    with timer("sync"):
        if pipe is None:  # overlap: the pipeline's snapshot, when it starts the next rollout
            module.engine.sync(module.policy)
    with timer("log"):
        module.rl_step = step + 1
        module.last_samples = fresh
        if pipe is not None:
            stats.update({**pipe_stats, **pipe.stats()})
        metrics = train_metrics(module, fresh, counts, {**stats, **adv_stats})
        n_local = len(fresh)
    metrics.update({f"perf/{k}_s": v for k, v in timer.seconds.items()})
    metrics["perf/rollout_tokens_per_s"] = sum(t.num_generated for t in fresh) / max(
        timer.seconds["rollout"], 1e-9
    )
    metrics["perf/update_tokens_per_s"] = stats.pop("_upd_tokens", 0) / max(
        timer.seconds["update"], 1e-9
    )
    metrics["perf/peak_rss_gb"] = peak_rss_gb()
    module.log_train(D.reduce_metrics(metrics, n_local))


def old_from_update(algorithm, critic) -> bool:
    """Whether the update's own forward gives the old log-probs: one epoch of one minibatch
    (every micro-batch's forward runs before the only optimizer step, so the weights are the
    rollout's), no critic, and the KL not in the reward (which needs them before the update).
    The score phase then skips that forward: one forward of the batch fewer per step."""
    a = algorithm
    return a.epochs == 1 and a.minibatches == 1 and critic is None and a.kl_mode != "reward"


def score(module, trajs: list[Trajectory]) -> ScoredBatch | None:
    """The trainer's (old) and the reference's log-probs, and the old values when there is a
    critic, computed once per step; None without episodes."""
    updater = module.updater
    with D.gathered(module.policy, module.reference, module.critic):
        if not trajs:
            return None
        batch = collate(trajs, module.tokenizer.pad_token_id).to(module.device)
        values, old = None, None
        # overlap computes them here: its importance-weight statistics and masking need them
        fused = old_from_update(module.algorithm, module.critic) and module.pipeline is None
        if module.critic is None and not fused:
            old = updater.logprobs(module.policy, batch)
        elif module.critic is not None:
            old, values = updater.logprobs_and_values(batch)
        return ScoredBatch(batch, old=old, ref=module.reference_logprobs(batch), values=values)


def logprob_stats(algorithm, scored: ScoredBatch) -> dict[str, float]:
    """The engine's behaviour log-probs vs the trainer's (old), every step (updated or not),
    and the old policy's sequence KL to the reference."""
    mask = scored.batch.loss_mask
    stats = {
        "rollout/logprob_diff": float(
            ((scored.old - scored.batch.behaviour_logprobs).abs() * mask).sum()
            / mask.sum().clamp(min=1)
        )
    }
    if scored.ref is not None:
        kl = F.sequence_kl(scored.old, scored.ref, mask, algorithm.kl_estimator)
        stats["loss/kl_ref_seq"] = float(kl.mean())
    return stats


def advantages(module, trajs: list[Trajectory], scored: ScoredBatch | None):
    """Rewards (minus KL when kl_mode=reward) -> ``algorithm.advantages``; drops uninformative
    groups when the algorithm samples dynamically. Returns the kept trajectories, their tensors
    (with advantages, and returns where the algorithm has a critic) and stats."""
    if not trajs:
        return trajs, scored, {}
    algo, device = module.algorithm, module.device
    rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32, device=device)
    groups = torch.tensor([t.group for t in trajs], device=device)
    if scored.ref is not None and scored.old is not None:
        rewards = algo.kl_in_reward(rewards, scored.old, scored.ref, scored.batch.loss_mask)
    keep = algo.keep_mask(rewards, groups)
    stats = {"rollout/dropped_groups": float(torch.unique(groups[~keep]).numel())}
    idx = keep.nonzero().flatten()
    kept = [trajs[i] for i in idx.tolist()]
    scored = scored.select(idx)
    adv, returns, adv_stats = algo.advantages(kept, rewards[keep], groups[keep], scored)
    scored.advantages, scored.returns = adv, returns
    stats.update(adv_stats)
    return kept, scored, stats


def update(module, trajs: list[Trajectory], scored: ScoredBatch | None) -> dict:
    """epochs x minibatches of the algorithm's loss; old log-probs the update's forward was to
    give (``old_from_update``) are filled where it did not run."""
    stats: dict = {"_upd_tokens": 0}
    if scored is not None and scored.old is None:
        scored.old = torch.zeros_like(scored.batch.behaviour_logprobs)
        scored.old_pending = torch.zeros(len(trajs), dtype=torch.bool, device=module.device)
    try:
        return _epochs(module, trajs, scored, stats)
    finally:
        if scored is not None and scored.old_pending is not None:
            fill_old(module, scored)
            scored.old_pending = None


def _epochs(module, trajs: list[Trajectory], scored: ScoredBatch | None, stats: dict) -> dict:
    algo, updater = module.algorithm, module.updater
    # under DDP/FSDP every rank takes the same decision (their gradients meet in backward)
    if not D.any_rank(bool(trajs) and bool((scored.advantages != 0).any())):
        stats["loss/skipped_zero_adv"] = 1.0
        return stats
    opt = module.optimizers()
    gen = module.generator(module.rl_step, 1)
    loss_fn = _loss_fn(algo, scored)
    batch = scored.batch if scored is not None else None
    acc: dict[str, list[float]] = {}
    for _ in range(algo.epochs):
        perm = torch.randperm(len(trajs), generator=gen).to(module.device)
        mbs = list(perm.chunk(algo.minibatches)) if trajs else []
        if D.is_distributed():
            mbs += [perm[:0]] * (int(D.all_reduce(len(mbs), "max")) - len(mbs))
        for mb in mbs:
            for k, v in updater.step(opt, batch, mb, loss_fn).items():
                acc.setdefault(k, []).append(v)
            if len(mb):
                stats["_upd_tokens"] += int(batch.attention_mask[mb].sum())
    stats.update({k: float(np.mean(v)) for k, v in acc.items()})
    if algo.needs_reference:
        if scored is not None and scored.old_pending is not None:
            fill_old(module, scored)
        old, ref = (scored.old, scored.ref) if trajs else (None, None)
        kl = updater.global_kl(old, ref, batch.loss_mask if trajs else None)
        algo.kl_controller.update(kl, n_steps=int(D.all_reduce(len(trajs))))
        stats["loss/kl_coef"] = float(algo.kl_controller.value)
    return stats


def _loss_fn(algo, scored: ScoredBatch | None):
    """The algorithm's loss on one micro-batch of ``scored``; it first records the forward's
    log-probs as the old ones where the update gives them (before the only optimizer step)."""

    def loss(logp, values, sub, rows, micro):
        if scored.old_pending is not None:
            scored.old[micro, : logp.shape[1]] = logp.detach()
            scored.old_pending[micro] = True
        critic = (
            {}
            if values is None
            else {
                "values": values,
                "old_values": rows(scored.values),
                "returns": rows(scored.returns),
            }
        )
        return algo.loss(
            logp,
            rows(scored.old),
            rows(scored.ref),
            rows(scored.advantages),
            sub.loss_mask,
            behaviour_logprobs=sub.behaviour_logprobs,
            **critic,
        )

    return loss


def fill_old(module, scored: ScoredBatch) -> None:
    """Old log-probs of the rows the update did not reach (it was skipped: the weights are
    still the rollout's); they count as filled after."""
    missing = (~scored.old_pending).nonzero().flatten()
    if not len(missing):
        return
    with D.gathered(module.policy):
        scored.old[missing] = module.updater.logprobs(module.policy, scored.batch.select(missing))
    scored.old_pending[missing] = True
