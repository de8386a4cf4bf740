"""GRPO and its loss variants (Dr. GRPO, DAPO, GSPO): group-normalized advantages, a clipped
importance ratio, optional KL to the reference."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agentrl.algorithms import credit as C
from agentrl.algorithms import functional as F
from agentrl.algorithms import objective
from agentrl.algorithms.kl import KLController
from agentrl.protocols import RLAlgorithm

# loss_type -> (its aggregation, the level of its importance ratio)
LOSS_TYPES = {
    # per-sequence mean of token losses (DeepSeekMath GRPO; TRL "grpo")
    "grpo": ("seq_mean_token_mean", "token"),
    # token sums over a constant max_completion_length (Liu et al. 2025; TRL "dr_grpo")
    "dr_grpo": ("seq_mean_token_sum_norm", "token"),
    # token-level mean over the whole batch (Yu et al. 2025; TRL "dapo")
    "dapo": ("token_mean", "token"),
    # one clipped ratio per sequence, the geometric mean of its token ratios (Zheng et al. 2025;
    # TRL loss_type="grpo" with importance_sampling_level="sequence")
    "gspo": ("seq_mean_token_mean", "sequence"),
}


@dataclass
class GRPO(RLAlgorithm):
    """Configured (not subclassed) from ``conf/algorithm/{grpo,dr_grpo,dapo,gspo}.yaml``; see the
    YAML for each field. ``aggregation=None`` means the loss_type's own (``LOSS_TYPES``); only
    ``loss_type=grpo`` accepts another one."""

    group_size: int = 8
    loss_type: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    scale_rewards: bool = True
    kl_coef: float = 0.05
    kl_estimator: str = "k3"
    kl_mode: str = "loss"
    kl_target: float | None = None
    kl_horizon: int = 10000
    aggregation: str | None = None
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
        if self.group_size < 2:
            raise ValueError(
                f"algorithm.group_size must be >= 2 for GRPO (advantages are relative to the "
                f"group), got {self.group_size}"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"algorithm.loss_type must be one of {tuple(LOSS_TYPES)}, got {self.loss_type!r}"
            )
        own = LOSS_TYPES[self.loss_type][0]
        if self.aggregation is None:
            self.aggregation = own
        elif self.loss_type != "grpo" and self.aggregation != own:
            raise ValueError(
                f"algorithm.loss_type={self.loss_type} aggregates by {own}; set "
                f"algorithm.aggregation to {own} or null (got {self.aggregation!r}), or use "
                f"loss_type=grpo for another aggregation"
            )
        if self.loss_type == "dr_grpo":
            if self.max_completion_length is None:
                raise ValueError(
                    "algorithm.loss_type=dr_grpo needs algorithm.max_completion_length, the "
                    "constant that divides each episode's token sum (the generation budget)"
                )
            if self.scale_rewards:
                raise ValueError(
                    "algorithm.loss_type=dr_grpo drops the group-std scaling of advantages "
                    "(Dr. GRPO); set algorithm.scale_rewards=false"
                )
        objective.check_fields(self)
        self.kl_controller = objective.kl_controller(self)

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    def keep_mask(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """[N] rewards, [N] group ids -> bool [N]; False on the groups ``dynamic_sampling`` drops
        (zero reward variance). All True when dynamic_sampling is off."""
        return objective.keep_mask(self, rewards, groups)

    def kl_in_reward(self, rewards, logprobs, ref_logprobs, mask) -> torch.Tensor:
        """[N] rewards, [N, T] old and reference log-probs and mask -> [N] rewards minus
        kl_coef * the episode's summed KL if ``kl_mode == "reward"``, else the rewards as given."""
        return objective.kl_in_reward(self, rewards, logprobs, ref_logprobs, mask)

    def episode_advantages(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """[N] rewards, [N] group ids -> [N] advantages (one per episode, broadcast over tokens)."""
        return F.group_advantages(rewards, groups, scale=self.scale_rewards)

    def advantages(self, trajs, rewards: torch.Tensor, groups: torch.Tensor, scored):
        """The step's advantages: ``token_advantages`` on ``scored`` (a ``ScoredBatch``), no
        returns (no critic), no stats."""
        width = scored.batch.loss_mask.shape[1]
        return self.token_advantages(trajs, rewards, groups, width), None, {}

    def token_advantages(self, trajs, rewards, groups, width: int) -> torch.Tensor:
        """Advantages under ``credit`` (``credit.advantages``): [N] for ``trajectory``, [N, width]
        token advantages aligned with ``TokenBatch.loss_mask`` for ``turn`` and ``transition``."""
        return C.advantages(self, trajs, rewards, groups, width, scale=self.scale_rewards)

    def loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        behaviour_logprobs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss on one minibatch. [N, T] log-probs and mask, [N] advantages;
        ``behaviour_logprobs`` [N, T] (the rollout engine's) only when ``tis_cap`` is set."""
        ratio_level = LOSS_TYPES[self.loss_type][1]
        return objective.clipped_loss(
            self,
            logprobs,
            old_logprobs,
            ref_logprobs,
            advantages,
            mask,
            behaviour_logprobs,
            ratio_level,
        )

    def state_dict(self) -> dict:
        """The state a checkpoint must carry: the (possibly adapted) KL coefficient."""
        return {"kl_controller": self.kl_controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])
