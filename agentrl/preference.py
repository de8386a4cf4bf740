"""The training step of preference algorithms (``algorithm=dpo``, ``algorithm=online_dpo``):
``algorithm.step: preference``, the sibling of ``agentrl/rl_step.py``. The phases are the RL
step's, timed the same way into ``perf/<phase>_s``:

    rollout   the step's pairs, from ``algorithm.pairs``:
                env        env_pairs on the step's tasks (oracle demonstration vs a perturbed
                           copy the verifier rejects), seeded by (seed, step)
                file       the next pairs of algorithm.pairs_file (as many as the step has tasks)
                reference  group_size samples per task from the reference policy, ranked by the
                           configured reward (a fixed sampling policy: offline)
                policy     group_size samples per task from the current policy, ranked (online)
    score     pairs -> token-exact episodes (pair_trajectories), the reference's log-probs
              -> PairBatch
    update    epochs x minibatches of pairs through the module's PolicyUpdater (micro-batched,
              a pair never split), the algorithm's loss(logprobs, ref_logprobs, mask)
    sync, log as in RL; ``pref/`` metrics: chosen/rejected implicit rewards, margin, accuracy,
              pairs, ties (ranked groups whose rewards were all equal), skipped tasks (env);
              and the components' ``env/``, ``reward/``, ``gateway/`` metrics, as in RL
              (``agentrl.metrics_channel``)
"""

from __future__ import annotations

import random

import torch

from agentrl import stopping
from agentrl.batching import collate
from agentrl.metrics_channel import component_metrics
from agentrl.pairs import env_pairs, pair_trajectories, ranked_pairs
from agentrl.rewards.base import score_batch
from agentrl.step_data import PairBatch
from agentrl.step_metrics import Timer, episode_metrics, peak_rss_gb

_PREF_STATS = ("chosen_reward", "rejected_reward", "reward_margin", "preference_accuracy")


def preference_step(module, batch) -> None:
    """One preference-optimization step of ``module`` (an ``AgentRLModule``) on ``batch``."""
    step, tasks = batch["step"], batch["tasks"]
    micro = module.updater.micro_batch_size
    if micro % 2:
        raise ValueError(
            "DPO keeps each (chosen, rejected) pair in one micro-batch: "
            f"module.update_micro_batch_size must be even, got {micro}"
        )
    timer = Timer()
    stopping.entered("rollout", step + 1)
    with timer("rollout"):
        pairs, sampled, stats = collect_pairs(module, tasks, step)
    stopping.check("rollout", step + 1)  # a stop signal cut the rollout short: redo the step
    with timer("score"):
        scored = score_pairs(module, pairs)
    with timer("update"):
        stats.update(update(module, scored, step))
    with timer("sync"):
        module.engine.sync(module.policy)
    module.rl_step = step + 1
    episodes = sampled or [t for p in pairs for t in p.trajectories]
    module.last_samples = episodes
    metrics = {}
    if sampled:
        ok = [t for t in sampled if t.status != "failed"]
        metrics.update(episode_metrics(ok, prefix="rollout"))
        if "rollout/success_rate" in metrics:  # absent when every episode failed
            metrics["env/success_rate"] = metrics.pop("rollout/success_rate")
        metrics["rollout/failed_episodes"] = float(len(sampled) - len(ok))
    metrics.update(stats)
    metrics.update({f"perf/{k}_s": v for k, v in timer.seconds.items()})
    metrics["perf/peak_rss_gb"] = peak_rss_gb()
    metrics["loss/skipped_updates_total"] = float(module.counters["skipped_updates"])
    metrics["train/rl_step"] = float(module.rl_step)
    # env counters, reward statistics (when the step's episodes were ranked by the reward) and
    # runner counts: the same channel as the RL step's
    metrics.update(component_metrics(module, episodes, rewarded=bool(sampled)))
    module.log_train(metrics)


def collect_pairs(module, tasks, step: int):
    """The step's pairs (each with its trajectories), the sampled episodes (ranked sources) and
    counts."""
    algo = module.algorithm
    if algo.pairs == "env":
        rng = random.Random(module.seed * 1_000_003 + step * 7919 + module.global_rank)
        pairs, counts = env_pairs(
            module.suite, module.runner, tasks, rng, algo.perturbations, algo.max_tries
        )
        stats = {
            "pref/no_chosen": float(counts["no_chosen"]),
            "pref/no_rejected": float(counts["no_rejected"]),
        }
        return _with_trajectories(module, pairs), [], {**stats, "pref/pairs": float(len(pairs))}
    if algo.pairs == "file":
        n, world = len(tasks), module.trainer.world_size if module._trainer is not None else 1
        offset = (step * world + module.global_rank) * n
        chosen = [algo.file_pairs[(offset + i) % len(algo.file_pairs)] for i in range(n)]
        return _with_trajectories(module, chosen), [], {"pref/pairs": float(n)}
    sampled = _sample(module, tasks, step, from_reference=algo.pairs == "reference")
    counts = score_batch(module.reward, sampled)
    pairs, ties = ranked_pairs(sampled)
    stats = {
        "pref/pairs": float(len(pairs)),
        "pref/ties": float(ties),
        "rollout/reward_errors": float(counts["reward_errors"] + counts["reward_nonfinite"]),
    }
    return pairs, sampled, stats


def _with_trajectories(module, pairs):
    """Pairs with their token-exact trajectories (replayed through the env when needed); a pair
    whose replay fails is dropped."""
    out = []
    for pair in pairs:
        try:
            trajs = pair_trajectories(module.runner, pair)
        except RuntimeError:
            continue
        if all(t.status != "failed" and t.num_generated > 0 for t in trajs):
            pair.trajectories = trajs
            out.append(pair)
    return out


def _sample(module, tasks, step: int, from_reference: bool):
    """``group_size`` episodes per task from the current policy, or from the reference (the
    adapter disabled, or the frozen copy bound to the engine for the rollout)."""
    if not from_reference:
        return module.rollout(tasks, step)
    if module.reference is None:
        with module.policy.disable_adapter():
            return module.rollout(tasks, step)
    module.engine.bind(module.reference, module.tokenizer)
    try:
        return module.rollout(tasks, step)
    finally:
        module.engine.bind(module.policy, module.tokenizer)


def score_pairs(module, pairs) -> PairBatch | None:
    """Rows [chosen_0, rejected_0, chosen_1, ...] as a TokenBatch and the reference's
    log-probs; None without pairs."""
    if not pairs:
        return None
    trajs = [t for p in pairs for t in p.trajectories]
    batch = collate(trajs, module.tokenizer.pad_token_id).to(module.device)
    return PairBatch(batch, module.reference_logprobs(batch))


def update(module, scored: PairBatch | None, step: int) -> dict[str, float]:
    """epochs x minibatches of pairs; each minibatch is one optimizer step of the updater (micro-
    batched, gradient clipped, a non-finite loss or gradient skipped and counted)."""
    if scored is None:
        return {"loss/skipped_no_pairs": 1.0}
    algo = module.algorithm
    opt = module.optimizers()
    gen = module.generator(step, 1)

    def loss(logp, values, sub, rows, micro):
        return algo.loss(logp, rows(scored.ref), sub.loss_mask)

    acc: dict[str, list[float]] = {}
    for _ in range(algo.epochs):
        perm = torch.randperm(scored.num_pairs, generator=gen)
        for chunk in perm.chunk(algo.minibatches):
            rows = torch.stack([2 * chunk, 2 * chunk + 1], dim=1).flatten().to(module.device)
            for k, v in module.updater.step(opt, scored.batch, rows, loss).items():
                acc.setdefault(k, []).append(v)
    out = {k: sum(v) / len(v) for k, v in acc.items()}
    for name in _PREF_STATS:
        if f"loss/{name}" in out:
            out[f"pref/{name}"] = out.pop(f"loss/{name}")
    out["loss/skipped_no_pairs"] = 0.0
    return out
