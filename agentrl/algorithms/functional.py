"""Pure tensor functions for advantages and policy losses.

Shapes: N episodes (rows), T token positions. ``mask`` is 1.0 on tokens the policy generated
(the loss is taken there only) and 0.0 elsewhere. Nothing here touches a model.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
RATIO_LEVELS = ("token", "sequence")


# ----------------------------------------------------------------- advantages
def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by the group's std.

    rewards: [N] float; groups: [N] int, equal ids share a task. Returns [N].
    The std is the unbiased (n-1) one; a group with identical rewards gets advantage 0.
    """
    adv = torch.zeros_like(rewards)
    for g in torch.unique(groups):
        idx = groups == g
        r = rewards[idx]
        if bool(r.max() == r.min()):
            # identical rewards carry no signal (r - mean would be float rounding noise)
            continue
        centered = r - r.mean()
        if scale and r.numel() > 1:
            centered = centered / (r.std(unbiased=True) + eps)
        adv[idx] = centered
    return adv


def leave_one_out_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RLOO advantages: each reward minus the mean of the *other* rewards of its group.

    rewards: [N] float; groups: [N] int. Returns [N].
    A_i = r_i - (S - r_i) / (n - 1), S the group's sum, n its size; equivalently
    n / (n - 1) * (r_i - mean). A group of one has no baseline and gets advantage 0.
    """
    adv = torch.zeros_like(rewards)
    for g in torch.unique(groups):
        idx = groups == g
        r = rewards[idx]
        n = r.numel()
        if n > 1:
            adv[idx] = r - (r.sum() - r) / (n - 1)
    return adv


def batch_advantages(
    rewards: torch.Tensor,
    groups: torch.Tensor,
    group_baseline: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """REINFORCE++ advantages: normalized over the whole batch, not per group.

    rewards: [N] float; groups: [N] int (used only when ``group_baseline``). Returns [N].
    x = rewards, or rewards minus their group's mean when ``group_baseline`` (REINFORCE++-baseline);
    then A = (x - mean(x)) / (std(x) + eps) with mean and unbiased std over all N episodes.
    A batch of one, or one whose x are all equal, gets advantage 0.
    """
    x = group_advantages(rewards, groups, scale=False) if group_baseline else rewards
    centered = x - x.mean()
    if x.numel() < 2:
        return torch.zeros_like(rewards)
    return centered / (x.std(unbiased=True) + eps)


def informative_groups(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """DAPO's dynamic-sampling filter. rewards: [N] float; groups: [N] int -> bool [N].

    True for the episodes of groups whose rewards are not all equal. A group with zero reward
    variance (all solved or all failed, or a group of one) has zero group-relative advantage and
    only dilutes the loss, so DAPO drops it.
    """
    keep = torch.zeros_like(rewards, dtype=torch.bool)
    for g in torch.unique(groups):
        idx = groups == g
        r = rewards[idx]
        keep[idx] = bool(r.max() > r.min())
    return keep


# ----------------------------------------------------------------- KL and importance weights
def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs. [N, T] -> [N, T].

    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r, with log r = logp - ref_logp
    (Schulman's estimators; k3 is unbiased and always >= 0).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")


def sequence_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str
) -> torch.Tensor:
    """KL(policy || reference) of each episode: the per-token estimate summed over its generated
    tokens. logprobs, ref_logprobs, mask: [N, T] -> [N] (nats per episode)."""
    return (kl_penalty(logprobs, ref_logprobs, estimator) * mask).sum(-1)


def kl_in_reward(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    estimator: str,
) -> torch.Tensor:
    """Rewards with the KL penalty folded in, for per-episode advantages. Returns [N], detached.

    rewards: [N]; logprobs (the rollout policy's, i.e. the trainer's old log-probs),
    ref_logprobs, mask: [N, T].
    With a per-token reward r_t = -coef * kl_t on every generated token plus the task reward at
    the end, the undiscounted return from the first generated token is
    ``rewards - coef * sum_t kl_t``; that is what every token of the episode gets here (the
    per-episode interface has no per-token returns). TRL's RLOOTrainer does the same with k1.
    """
    with torch.no_grad():
        return rewards - coef * sequence_kl(logprobs, ref_logprobs, mask, estimator)


def tis_weights(
    old_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance weights for the rollout-engine / trainer mismatch. [N, T] -> [N, T].

    w_t = min(exp(old_t - behaviour_t), cap) on generated tokens, 0 elsewhere; detached.
    ``old`` are the trainer's log-probs of the sampled tokens before the update, ``behaviour``
    the engine's (e.g. vLLM's) at sampling time; the weight multiplies the per-token policy loss
    (truncated importance sampling, as TRL's ``vllm_importance_sampling_mode=token_truncate``).
    """
    with torch.no_grad():
        w = torch.exp(old_logprobs - behaviour_logprobs).clamp(max=cap)
        return torch.where(mask > 0, w, torch.zeros_like(w))


# ----------------------------------------------------------------- aggregation and the loss
def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: str, norm_length: int | None = None
) -> torch.Tensor:
    """Reduce per-token values [N, T] to a scalar over masked tokens.

    token_mean: sum over all masked tokens / number of masked tokens (DAPO; TRL ``dapo``/``bnpo``,
    verl ``token-mean``).
    seq_mean_token_mean: mean over each sequence's tokens, then mean over sequences that have any
    (TRL ``grpo``, verl ``seq-mean-token-mean``; TRL also counts token-less rows, as zeros).
    seq_mean_token_sum_norm: each sequence's token sum divided by a constant, then the mean over
    all sequences (Dr. GRPO; TRL ``dr_grpo`` divides by ``max_completion_length``, verl
    ``seq-mean-token-sum-norm`` by its ``loss_scale_factor``). The constant is ``norm_length``,
    or T (this batch's padded width, which is not constant across batches) when it is None.
    """
    if mode == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq_mean_token_mean":
        per_seq_count = mask.sum(-1)
        per_seq = (values * mask).sum(-1) / per_seq_count.clamp(min=1.0)
        has_tokens = (per_seq_count > 0).float()
        return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)
    if mode == "seq_mean_token_sum_norm":
        length = values.shape[-1] if norm_length is None else norm_length
        return ((values * mask).sum(-1) / length).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")


def aggregation_weight(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """What ``aggregate`` divides by, for combining micro-batches. mask: [N, T] -> scalar.

    token_mean: masked tokens; seq_mean_token_mean: rows with a masked token;
    seq_mean_token_sum_norm: rows. The minibatch loss equals the sum over its micro-batches of
    ``aggregate(micro) * aggregation_weight(micro) / aggregation_weight(minibatch)``.
    """
    if mode == "token_mean":
        return mask.sum()
    if mode == "seq_mean_token_mean":
        return (mask.sum(-1) > 0).float().sum()
    if mode == "seq_mean_token_sum_norm":
        return torch.tensor(float(mask.shape[0]), device=mask.device)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    aggregation: str,
    *,
    ratio_level: str = "token",
    norm_length: int | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO/GRPO clipped surrogate. logprobs, old_logprobs, mask: [N, T]; advantages: [N] or [N, T].

    per token: -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A).
    ratio_level="token": ratio = exp(logprobs - old_logprobs) per token [N, T].
    ratio_level="sequence" (GSPO): one ratio per sequence [N, 1], the geometric mean of its token
    ratios, exp(mean over masked tokens of (logprobs - old_logprobs)), clipped at that level.
    token_weights [N, T] (e.g. ``tis_weights``) multiply the per-token loss before aggregation.
    Returns the aggregated loss (``aggregate`` with ``norm_length``) and detached statistics.
    """
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio level {ratio_level!r}; choose one of {RATIO_LEVELS}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    log_ratio = logprobs - old_logprobs
    if ratio_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights
    per_token = per_token.expand_as(mask)
    loss = aggregate(per_token, mask, aggregation, norm_length)
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        stats = {
            # fraction of tokens where the clipped branch was the one taken (the clip was active)
            "clipfrac": ((clipped < unclipped).float().expand_as(mask) * mask).sum() / n,
            # k3 estimate of KL(old || new), cleanrl's approx_kl (of the sequence ratio for GSPO)
            "approx_kl": (((ratio - 1.0) - log_ratio).expand_as(mask) * mask).sum() / n,
            "ratio_mean": (ratio.expand_as(mask) * mask).sum() / n,
        }
    return loss, stats


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """Log-probability of each target token. logits [N, T, V], targets [N, T] -> [N, T].

    Also returns the per-token entropy [N, T] of the tempered distribution (no gradient: it is
    logged, not optimised; its graph would hold two more [N, T, V] tensors).
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
    return picked, entropy
