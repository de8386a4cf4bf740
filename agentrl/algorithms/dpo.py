"""DPO and IPO on preference pairs of multi-turn episodes, offline or online.

Each pair is two episodes of one task (token-exact, ``agentrl.pairs``); an episode's log-prob is
the sum of the log-probs of the tokens the agent generated (loss mask 1), the env's observations
excluded. With h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)):

    dpo (Rafailov et al. 2023):  -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
                                 (eps = label_smoothing, the conservative DPO of Mitchell 2023)
    ipo (Azar et al. 2023):      (h - 1 / (2 * beta)) ** 2

The implicit rewards beta * (log pi - log ref) of the chosen and rejected episodes, their margin
and the preference accuracy (chosen reward > rejected reward) are logged. Where the pairs come
from is ``pairs`` (see conf/algorithm/dpo.yaml and agentrl/preference.py, which runs the step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as nnf

from agentrl.pairs import PERTURBATIONS, PreferencePair, load_pairs
from agentrl.protocols import PreferenceAlgorithm

LOSS_TYPES = ("dpo", "ipo")
PAIR_SOURCES = ("env", "file", "reference", "policy")


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] per-token log-probs and loss mask -> [N] summed log-prob of each episode's
    generated tokens."""
    return (logprobs * mask).sum(-1)


def preference_logits(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> torch.Tensor:
    """[P] sequence log-probs of each side -> [P] h, the chosen log-ratio minus the rejected."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """[P] log-ratio differences -> [P] DPO losses (label smoothing eps in [0, 0.5))."""
    return -(1 - label_smoothing) * nnf.logsigmoid(beta * h) - label_smoothing * nnf.logsigmoid(
        -beta * h
    )


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """[P] log-ratio differences -> [P] IPO losses, the squared distance of h to 1 / (2 beta)."""
    return (h - 1 / (2 * beta)) ** 2


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows laid out as pairs [chosen, rejected, chosen, rejected, ...] -> (chosen [P, ...],
    rejected [P, ...]). Raises when the number of rows is odd (a micro-batch that split a pair)."""
    if values.shape[0] % 2:
        raise ValueError(
            "DPO rows must come as (chosen, rejected) pairs in one micro-batch; "
            "set module.update_micro_batch_size to an even number"
        )
    return values[0::2], values[1::2]


@dataclass
class DPO(PreferenceAlgorithm):
    """Configured from ``conf/algorithm/dpo.yaml`` (offline) or ``online_dpo.yaml`` (pairs
    sampled from the current policy each step); see the YAML for each field."""

    loss_type: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    pairs: str = "env"
    pairs_file: str | None = None
    group_size: int = 8
    perturbations: list[str] = field(default_factory=lambda: list(PERTURBATIONS))
    max_tries: int = 8
    epochs: int = 1
    minibatches: int = 1
    max_grad_norm: float = 1.0
    step: str = "preference"
    file_pairs: list[PreferencePair] = field(init=False, repr=False, compare=False)

    # per-pair mean: every episode of a pair has generated tokens, so rows weigh micro-batches
    aggregation = "seq_mean_token_mean"

    def __post_init__(self):
        self.perturbations = list(self.perturbations)
        if self.step != "preference":
            raise ValueError(f"algorithm.step must be preference for DPO, got {self.step!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"algorithm.loss_type must be one of {LOSS_TYPES} for DPO, got {self.loss_type!r}"
            )
        if not self.beta > 0:
            raise ValueError(f"algorithm.beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"algorithm.label_smoothing must be in [0, 0.5), got {self.label_smoothing}"
            )
        if self.label_smoothing and self.loss_type != "dpo":
            raise ValueError("algorithm.label_smoothing applies to loss_type=dpo only")
        if self.pairs not in PAIR_SOURCES:
            raise ValueError(f"algorithm.pairs must be one of {PAIR_SOURCES}, got {self.pairs!r}")
        for name in ("epochs", "minibatches", "max_tries"):
            if getattr(self, name) < 1:
                raise ValueError(f"algorithm.{name} must be >= 1, got {getattr(self, name)}")
        if self.pairs in ("reference", "policy") and self.group_size < 2:
            raise ValueError(
                f"algorithm.group_size must be >= 2 to rank samples into pairs, got "
                f"{self.group_size}"
            )
        unknown = [p for p in self.perturbations if p not in PERTURBATIONS]
        if unknown or not self.perturbations:
            raise ValueError(
                f"algorithm.perturbations must be a non-empty subset of {PERTURBATIONS}, "
                f"got {self.perturbations}"
            )
        if self.max_grad_norm <= 0:
            raise ValueError(f"algorithm.max_grad_norm must be > 0, got {self.max_grad_norm}")
        self.file_pairs = []
        if self.pairs == "file":
            if not self.pairs_file:
                raise ValueError("algorithm.pairs=file needs algorithm.pairs_file (a JSONL path)")
            self.file_pairs = load_pairs(self.pairs_file)

    @property
    def needs_reference(self) -> bool:
        return True

    def loss(
        self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean preference loss over the pairs of one micro-batch.

        logprobs, ref_logprobs, mask: [2P, T] (policy, reference, loss mask), rows in pairs
        [chosen_0, rejected_0, chosen_1, ...] (``step_data.PairBatch``).
        """
        if ref_logprobs is None:
            raise ValueError("DPO needs the reference policy's log-probs")
        policy = sequence_logprobs(logprobs, mask)
        ref = sequence_logprobs(ref_logprobs, mask)
        pol_c, pol_r = split_pairs(policy)
        ref_c, ref_r = split_pairs(ref)
        h = preference_logits(pol_c, pol_r, ref_c, ref_r)
        if self.loss_type == "dpo":
            losses = dpo_loss(h, self.beta, self.label_smoothing)
        else:
            losses = ipo_loss(h, self.beta)
        chosen_reward = self.beta * (pol_c - ref_c).detach()
        rejected_reward = self.beta * (pol_r - ref_r).detach()
        loss = losses.mean()
        stats = {
            "policy": loss.detach(),
            "chosen_reward": chosen_reward.mean(),
            "rejected_reward": rejected_reward.mean(),
            "reward_margin": (chosen_reward - rejected_reward).mean(),
            "preference_accuracy": (chosen_reward > rejected_reward).float().mean(),
        }
        return loss, stats

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
