"""Pure tensor functions for advantages and policy losses.

Shapes: N episodes (rows), T token positions. ``mask`` is 1.0 on tokens the policy generated
(the loss is taken there only) and 0.0 elsewhere. Nothing here touches a model.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


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
        centered = r - r.mean()
        if scale and r.numel() > 1:
            centered = centered / (r.std(unbiased=True) + eps)
        adv[idx] = centered
    return adv


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


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce per-token values [N, T] to a scalar over masked tokens.

    token_mean: sum over all masked tokens / number of masked tokens.
    seq_mean_token_mean: mean over each sequence's tokens, then mean over sequences that have any.
    seq_mean_token_sum_norm: each sequence's token sum divided by T (a constant), then the mean
    over sequences (Dr. GRPO's length-unbiased normalizer).
    """
    if mode == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq_mean_token_mean":
        per_seq_count = mask.sum(-1)
        per_seq = (values * mask).sum(-1) / per_seq_count.clamp(min=1.0)
        has_tokens = (per_seq_count > 0).float()
        return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)
    if mode == "seq_mean_token_sum_norm":
        return ((values * mask).sum(-1) / values.shape[-1]).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    aggregation: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO/GRPO clipped surrogate. logprobs, old_logprobs, mask: [N, T]; advantages: [N] or [N, T].

    per token: -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A),
    ratio = exp(logprobs - old_logprobs). Returns the aggregated loss and detached statistics.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        stats = {
            # fraction of tokens where the clipped branch was the one taken (the clip was active)
            "clipfrac": ((clipped < unclipped).float() * mask).sum() / n,
            # k3 estimate of KL(old || new), cleanrl's approx_kl
            "approx_kl": (((ratio - 1.0) - log_ratio) * mask).sum() / n,
            "ratio_mean": (ratio * mask).sum() / n,
        }
    return loss, stats


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """Log-probability of each target token. logits [N, T, V], targets [N, T] -> [N, T].

    Also returns the per-token entropy [N, T] of the tempered distribution.
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return picked, entropy
