"""What GRPO, RLOO and REINFORCE++ share: field checks, the KL terms and the clipped loss.

Plain functions over one of the algorithm dataclasses (composition, not a base class); each reads
the fields every algorithm has: clip_low, clip_high, kl_coef, kl_estimator, kl_mode, kl_target,
kl_horizon, aggregation, max_completion_length, dynamic_sampling, tis_cap, epochs, minibatches,
max_grad_norm, credit, step, and the ``kl_controller`` built from them.
"""

from __future__ import annotations

import torch

from agentrl.algorithms import credit
from agentrl.algorithms import functional as F
from agentrl.algorithms.kl import KLController

KL_MODES = ("loss", "reward")


def check_fields(algo) -> None:
    """Raise a ValueError naming the field for any shared value that cannot work."""
    if algo.step != "rl":
        raise ValueError(f"algorithm.step must be rl for {type(algo).__name__}, got {algo.step!r}")
    if algo.kl_estimator not in F.KL_ESTIMATORS:
        raise ValueError(
            f"algorithm.kl_estimator must be one of {F.KL_ESTIMATORS}, got {algo.kl_estimator!r}"
        )
    if algo.kl_mode not in KL_MODES:
        raise ValueError(f"algorithm.kl_mode must be one of {KL_MODES}, got {algo.kl_mode!r}")
    if algo.aggregation not in F.AGGREGATIONS:
        raise ValueError(
            f"algorithm.aggregation must be one of {F.AGGREGATIONS}, got {algo.aggregation!r}"
        )
    for name in ("epochs", "minibatches", "kl_horizon"):
        if getattr(algo, name) < 1:
            raise ValueError(f"algorithm.{name} must be >= 1, got {getattr(algo, name)}")
    if not (algo.clip_low >= 0 and algo.clip_high >= 0):
        raise ValueError("algorithm.clip_low and clip_high must be >= 0")
    if algo.kl_coef < 0:
        raise ValueError(f"algorithm.kl_coef must be >= 0, got {algo.kl_coef}")
    if algo.kl_target is not None and not (algo.kl_target > 0 and algo.kl_coef > 0):
        raise ValueError(
            "algorithm.kl_target (adaptive KL) needs kl_target > 0 and a starting kl_coef > 0, "
            f"got kl_target={algo.kl_target}, kl_coef={algo.kl_coef}"
        )
    for name in ("max_completion_length", "tis_cap"):
        value = getattr(algo, name)
        if value is not None and value <= 0:
            raise ValueError(f"algorithm.{name} must be > 0 or null, got {value}")
    if algo.max_grad_norm <= 0:
        raise ValueError(f"algorithm.max_grad_norm must be > 0, got {algo.max_grad_norm}")
    credit.check(algo)


def kl_controller(algo) -> KLController:
    """The coefficient holder: adaptive when ``kl_target`` is set, fixed at ``kl_coef`` otherwise."""
    return KLController(algo.kl_coef, algo.kl_target, algo.kl_horizon)


def keep_mask(algo, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """[N] rewards, [N] groups -> bool [N]: all True unless ``dynamic_sampling`` drops the groups
    with zero reward variance (``functional.informative_groups``)."""
    if algo.dynamic_sampling:
        return F.informative_groups(rewards, groups)
    return torch.ones_like(rewards, dtype=torch.bool)


def kl_in_reward(
    algo,
    rewards: torch.Tensor,
    logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """[N] rewards -> [N] rewards minus coef * the episode's KL when ``kl_mode == "reward"``
    (``functional.kl_in_reward``); unchanged otherwise, so a caller may call it always."""
    coef = algo.kl_controller.value
    if algo.kl_mode != "reward" or coef == 0:
        return rewards
    if logprobs is None or ref_logprobs is None or mask is None:
        raise ValueError(
            "algorithm.kl_mode=reward needs the rollout policy's and the reference's log-probs "
            "and the loss mask to fold the KL into the rewards"
        )
    return F.kl_in_reward(rewards, logprobs, ref_logprobs, mask, coef, algo.kl_estimator)


def clipped_loss(
    algo,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    behaviour_logprobs: torch.Tensor | None,
    ratio_level: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate, truncated importance weights (``tis_cap``) and, in ``kl_mode=loss``,
        ``coef * aggregate(kl)`` with the same aggregation. [N, T] log-probs and mask; advantages [N]
    (one per episode) or [N, T] (per token, e.g. from ``credit`` or GAE), passed through as given.

        TRL adds ``beta * kl_t`` to each token's loss before aggregating; aggregation is linear, so
        adding the two aggregates is the same number. The importance weights multiply the policy
        term only, not the KL (as in TRL).
    """
    weights = None
    if algo.tis_cap is not None:
        if behaviour_logprobs is None:
            raise ValueError(
                "algorithm.tis_cap is set but loss() got no behaviour_logprobs (the rollout "
                "engine's log-probs of the sampled tokens, [N, T])"
            )
        weights = F.tis_weights(old_logprobs, behaviour_logprobs, mask, algo.tis_cap)
    loss, stats = F.clipped_policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        algo.clip_low,
        algo.clip_high,
        algo.aggregation,
        ratio_level=ratio_level,
        norm_length=algo.max_completion_length,
        token_weights=weights,
    )
    stats["policy"] = loss.detach()
    n = mask.sum().clamp(min=1.0)
    if weights is not None:
        stats["tis_weight_mean"] = (weights * mask).sum() / n
        stats["tis_capped_frac"] = ((weights >= algo.tis_cap).float() * mask).sum() / n
    coef = algo.kl_controller.value
    if ref_logprobs is not None:
        kl = F.aggregate(
            F.kl_penalty(logprobs, ref_logprobs, algo.kl_estimator),
            mask,
            algo.aggregation,
            algo.max_completion_length,
        )
        if algo.kl_mode == "loss" and coef > 0:
            loss = loss + coef * kl
        stats["kl_ref"] = kl.detach()
        stats["kl_coef"] = torch.tensor(coef)
    return loss, stats
