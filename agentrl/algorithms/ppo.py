"""PPO with a value head: GAE over generated tokens, clipped policy loss, clipped value loss.

Pure tensor functions first (``gae``, ``value_loss``, ``explained_variance``, ``whiten``), then
the configured ``PPO`` the module drives. Shapes: N episodes, T token positions aligned with
``TokenBatch.loss_mask`` (``mask`` 1.0 on generated tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agentrl.algorithms import credit as C
from agentrl.algorithms import functional as F
from agentrl.algorithms import objective
from agentrl.algorithms.kl import KLController
from agentrl.protocols import RLAlgorithm
from agentrl.value import VALUE_HEADS


# ----------------------------------------------------------------- pure functions
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the generated tokens of each row.

    rewards, values, mask: [N, T] -> advantages, returns [N, T] (0 where mask is 0), detached.
    The steps are the masked positions in order; unmasked ones (prompt, observations, padding)
    are skipped, so the step after a turn's last token is the next turn's first token. After the
    last generated token the episode ends (next value 0):
        delta_t = r_t + gamma * V_next - V_t;   A_t = delta_t + gamma * lam * A_next
        returns = A + V.
    """
    with torch.no_grad():
        adv = torch.zeros_like(values)
        next_value = torch.zeros_like(values[:, 0])
        next_adv = torch.zeros_like(values[:, 0])
        for t in reversed(range(values.shape[1])):
            on = mask[:, t] > 0
            delta = rewards[:, t] + gamma * next_value - values[:, t]
            a_t = delta + gamma * lam * next_adv
            adv[:, t] = torch.where(on, a_t, torch.zeros_like(a_t))
            next_value = torch.where(on, values[:, t], next_value)
            next_adv = torch.where(on, a_t, next_adv)
        return adv, (adv + values) * mask


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip: float | None,
) -> torch.Tensor:
    """Per-token value loss [N, T]: 0.5 * (V - R)^2, or with ``clip`` the pessimistic
    0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clamp(V - V_old, -clip, clip)."""
    unclipped = (values - returns).pow(2)
    if clip is None:
        return 0.5 * unclipped
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum(unclipped, (clipped - returns).pow(2))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens (cleanrl); nan when Var(R) is 0."""
    m = mask > 0
    r, v = returns[m], values[m]
    var = r.var(unbiased=False) if r.numel() else torch.tensor(0.0)
    return float("nan") if var == 0 else float(1 - (r - v).var(unbiased=False) / var)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over masked entries, 0 elsewhere. [N, T] -> [N, T]."""
    m = mask > 0
    if m.sum() < 2:
        return x * mask
    sel = x[m]
    return (x - sel.mean()) / (sel.std() + eps) * mask


# ----------------------------------------------------------------- the algorithm
@dataclass
class PPO(RLAlgorithm):
    """Configured from ``conf/algorithm/ppo.yaml``; see the YAML for each field. The module builds
    the value head (``agentrl.value``) because ``needs_values`` is True, computes old values in
    the score phase; ``advantages`` is GAE over them."""

    group_size: int = 8
    value_head: str = "shared"
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.1
    value_clip: float | None = 0.2
    normalize_advantages: bool = True
    credit: str = "trajectory"
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
    epochs: int = 2
    minibatches: int = 2
    max_grad_norm: float = 1.0
    step: str = "rl"
    kl_controller: KLController = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError(f"algorithm.group_size must be >= 1, got {self.group_size}")
        if self.value_head not in VALUE_HEADS:
            raise ValueError(
                f"algorithm.value_head must be one of {VALUE_HEADS}, got {self.value_head!r}"
            )
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"algorithm.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.vf_coef <= 0:
            raise ValueError(f"algorithm.vf_coef must be > 0, got {self.vf_coef}")
        if self.value_clip is not None and self.value_clip <= 0:
            raise ValueError(f"algorithm.value_clip must be > 0 or null, got {self.value_clip}")
        objective.check_fields(self)
        self.kl_controller = objective.kl_controller(self)

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    @property
    def needs_values(self) -> bool:
        return True

    def keep_mask(self, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """[N] rewards, [N] group ids -> bool [N]; see ``GRPO.keep_mask``."""
        return objective.keep_mask(self, rewards, groups)

    def kl_in_reward(self, rewards, logprobs, ref_logprobs, mask) -> torch.Tensor:
        """Unchanged [N] rewards: PPO puts its KL penalty on each token in ``advantages``."""
        return rewards

    def advantages(self, trajs, rewards: torch.Tensor, groups: torch.Tensor, scored):
        """Token rewards (``credit.token_rewards``), minus coef * kl_t per token when
        ``kl_mode=reward``, then GAE with the old values (``groups`` unused: the value head is the
        baseline). ``scored`` (a ``ScoredBatch``) holds the batch, old and reference log-probs and
        old values. Returns advantages [N, T-1], returns [N, T-1], stats."""
        batch, values = scored.batch, scored.values
        mask = batch.loss_mask
        r = C.token_rewards(trajs, rewards, self.credit, mask.shape[1])
        coef = self.kl_controller.value
        if self.kl_mode == "reward" and coef > 0 and scored.ref is not None:
            r = r - coef * F.kl_penalty(scored.old, scored.ref, self.kl_estimator) * mask
        adv, returns = gae(r, values, mask, self.gamma, self.lam)
        if self.normalize_advantages:
            adv = whiten(adv, mask)
        if self.credit == "transition":
            adv = C.reweight_transitions(adv, trajs, mask.shape[1])
        n = mask.sum().clamp(min=1.0)
        stats = {
            "loss/explained_variance": explained_variance(values, returns, mask),
            "loss/return_mean": float((returns * mask).sum() / n),
        }
        return adv, returns, stats

    def loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        behaviour_logprobs: torch.Tensor | None = None,
        *,
        values: torch.Tensor,
        old_values: torch.Tensor,
        returns: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped policy loss (``objective.clipped_loss``, [N, T] advantages) plus
        vf_coef * the aggregated (clipped) value loss. values, old_values, returns: [N, T]."""
        loss, stats = objective.clipped_loss(
            self, logprobs, old_logprobs, ref_logprobs, advantages, mask, behaviour_logprobs
        )
        per_token = value_loss(values.float(), old_values, returns, self.value_clip)
        vf = F.aggregate(per_token, mask, self.aggregation, self.max_completion_length)
        n = mask.sum().clamp(min=1.0)
        stats["vf_loss"] = vf.detach()
        stats["value_mean"] = ((values.detach() * mask).sum() / n).float()
        return loss + self.vf_coef * vf, stats

    def state_dict(self) -> dict:
        return {"kl_controller": self.kl_controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])
