"""GRPO: group-normalized advantages, a clipped importance ratio, optional KL to the reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.algorithms import functional as F


@dataclass
class GRPO:
    """Configured (not subclassed) from ``conf/algorithm/grpo.yaml``; see the YAML for each field."""

    group_size: int = 8
    clip_low: float = 0.2
    clip_high: float = 0.2
    scale_rewards: bool = True
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    aggregation: str = "seq_mean_token_mean"
    epochs: int = 1
    minibatches: int = 1
    max_grad_norm: float = 1.0

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(
                f"algorithm.group_size must be >= 2 for GRPO (advantages are relative to the "
                f"group), got {self.group_size}"
            )
        if self.kl_estimator not in F.KL_ESTIMATORS:
            raise ValueError(
                f"algorithm.kl_estimator must be one of {F.KL_ESTIMATORS}, got {self.kl_estimator!r}"
            )
        if self.aggregation not in F.AGGREGATIONS:
            raise ValueError(
                f"algorithm.aggregation must be one of {F.AGGREGATIONS}, got {self.aggregation!r}"
            )
        for name in ("epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"algorithm.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.clip_low >= 0 and self.clip_high >= 0):
            raise ValueError("algorithm.clip_low and clip_high must be >= 0")
        if self.kl_coef < 0:
            raise ValueError(f"algorithm.kl_coef must be >= 0, got {self.kl_coef}")

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    def advantages(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """[N] rewards, [N] group ids -> [N] advantages (one per episode, broadcast over tokens)."""
        return F.group_advantages(rewards, groups, scale=self.scale_rewards)

    def loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss on one minibatch. [N, T] log-probs and mask, [N] advantages."""
        loss, stats = F.clipped_policy_loss(
            logprobs,
            old_logprobs,
            advantages,
            mask,
            self.clip_low,
            self.clip_high,
            self.aggregation,
        )
        stats["policy"] = loss.detach()
        if self.kl_coef > 0 and ref_logprobs is not None:
            kl = F.aggregate(
                F.kl_penalty(logprobs, ref_logprobs, self.kl_estimator), mask, self.aggregation
            )
            loss = loss + self.kl_coef * kl
            stats["kl_ref"] = kl.detach()
        return loss, stats
