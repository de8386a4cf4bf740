"""REINFORCE++ (Hu 2025): advantages normalized over the whole batch, PPO-clipped, with the KL
to the reference usually folded into the reward."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agentrl.algorithms import credit as C
from agentrl.algorithms import functional as F
from agentrl.algorithms import objective
from agentrl.algorithms.kl import KLController
from agentrl.protocols import RLAlgorithm


@dataclass
class ReinforcePP(RLAlgorithm):
    """Configured from ``conf/algorithm/reinforce_pp.yaml``; see the YAML for each field. Same
    interface as ``GRPO``: only the advantages differ (``functional.batch_advantages``)."""

    group_size: int = 8
    group_baseline: bool = False
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    kl_estimator: str = "k1"
    kl_mode: str = "reward"
    kl_target: float | None = None
    kl_horizon: int = 10000
    aggregation: str = "token_mean"
    max_completion_length: int | None = None
    dynamic_sampling: bool = False
    tis_cap: float | None = None
    epochs: int = 1
    minibatches: int = 2
    max_grad_norm: float = 1.0
    credit: str = "trajectory"
    turn_gamma: float = 1.0
    step: str = "rl"
    kl_controller: KLController = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError(f"algorithm.group_size must be >= 1, got {self.group_size}")
        if self.group_baseline and self.group_size < 2:
            raise ValueError(
                "algorithm.group_baseline subtracts the group mean and needs group_size >= 2, "
                f"got {self.group_size}"
            )
        objective.check_fields(self)
        self.kl_controller = objective.kl_controller(self)

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    def keep_mask(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """[N] rewards, [N] group ids -> bool [N]; see ``GRPO.keep_mask``."""
        return objective.keep_mask(self, rewards, groups)

    def kl_in_reward(self, rewards, logprobs, ref_logprobs, mask) -> torch.Tensor:
        """[N] rewards -> [N] rewards with the KL folded in; see ``GRPO.kl_in_reward``."""
        return objective.kl_in_reward(self, rewards, logprobs, ref_logprobs, mask)

    def episode_advantages(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """[N] rewards, [N] group ids -> [N] advantages normalized over all N episodes."""
        return F.batch_advantages(rewards, groups, group_baseline=self.group_baseline)

    def advantages(self, trajs, rewards: torch.Tensor, groups: torch.Tensor, scored):
        """The step's advantages: ``token_advantages`` on ``scored`` (a ``ScoredBatch``), no
        returns (no critic), no stats."""
        width = scored.batch.loss_mask.shape[1]
        return self.token_advantages(trajs, rewards, groups, width), None, {}

    def token_advantages(self, trajs, rewards, groups, width: int) -> torch.Tensor:
        """Advantages under ``credit`` (``credit.advantages``): [N] for ``trajectory``, [N, width]
        token advantages aligned with ``TokenBatch.loss_mask`` for ``turn`` and ``transition``."""
        return C.advantages(self, trajs, rewards, groups, width, scale=True)

    def loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        behaviour_logprobs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss on one minibatch; see ``GRPO.loss`` (token-level ratio)."""
        return objective.clipped_loss(
            self, logprobs, old_logprobs, ref_logprobs, advantages, mask, behaviour_logprobs
        )

    def state_dict(self) -> dict:
        return {"kl_controller": self.kl_controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])
