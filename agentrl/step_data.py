"""The tensors a training step passes from score to advantages to update (plain data).

N rows (episodes; in a preference step the rows [chosen_0, rejected_0, chosen_1, ...]), T tokens
(the step's longest episode). Per-token fields are aligned with ``TokenBatch.loss_mask``: column t
is the prediction of token t + 1, so they are [N, T-1].
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from agentrl.batching import TokenBatch


@dataclass
class ScoredBatch:
    """One RL step's episodes as tensors, filled phase by phase.

    batch:        TokenBatch (input_ids, attention_mask [N, T]; loss_mask, behaviour_logprobs
                  [N, T-1]: the rollout engine's log-probs of the sampled tokens)
    old:          [N, T-1] the trainer's log-probs before the update (score phase); None when the
                  update's own forward gives them (see ``rl_step.old_from_update``), until the
                  update fills them
    ref:          [N, T-1] the reference policy's log-probs; None when the algorithm needs none
    values:       [N, T-1] the critic's values before the update; None without a critic
    advantages:   [N] (one per episode) or [N, T-1] (per token); set by the advantages phase
    returns:      [N, T-1] the critic's regression targets (PPO's GAE); None otherwise
    old_pending:  bool [N] while the update fills ``old``: the rows it has filled so far
    """

    batch: TokenBatch
    old: torch.Tensor | None = None
    ref: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    old_pending: torch.Tensor | None = None

    def select(self, idx: torch.Tensor) -> ScoredBatch:
        """The rows ``idx`` of every field (None stays None)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v if v is None else v.select(idx) if isinstance(v, TokenBatch) else v[idx]
        return ScoredBatch(**out)


@dataclass
class PairBatch:
    """One preference step's pairs as tensors: P pairs, N = 2P rows [chosen_0, rejected_0, ...].

    batch:  TokenBatch of the 2P episodes (shapes as in ``ScoredBatch.batch``)
    ref:    [2P, T-1] the reference policy's log-probs
    """

    batch: TokenBatch
    ref: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return self.batch.input_ids.shape[0] // 2
