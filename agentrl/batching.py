"""Trajectories to padded tensors, and per-token log-probs of a model on them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.algorithms.functional import token_logprobs
from agentrl.types import Trajectory


@dataclass
class TokenBatch:
    """Right-padded episodes. N episodes, T = longest episode.

    input_ids: [N, T] long; attention_mask: [N, T] long.
    The rest are aligned with next-token prediction, i.e. position t predicts input_ids[:, t + 1]:
    loss_mask: [N, T-1] float (1 on generated tokens); behaviour_logprobs: [N, T-1] float.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    behaviour_logprobs: torch.Tensor

    def select(self, idx: torch.Tensor) -> TokenBatch:
        return TokenBatch(
            *(
                t[idx]
                for t in (
                    self.input_ids,
                    self.attention_mask,
                    self.loss_mask,
                    self.behaviour_logprobs,
                )
            )
        )

    def to(self, device) -> TokenBatch:
        return TokenBatch(
            *(
                t.to(device)
                for t in (
                    self.input_ids,
                    self.attention_mask,
                    self.loss_mask,
                    self.behaviour_logprobs,
                )
            )
        )


def collate(trajectories: list[Trajectory], pad_id: int) -> TokenBatch:
    width = max(len(t.token_ids) for t in trajectories)
    n = len(trajectories)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.float32)
    beh = torch.zeros((n, width), dtype=torch.float32)
    for i, t in enumerate(trajectories):
        k = len(t.token_ids)
        ids[i, :k] = torch.tensor(t.token_ids)
        attn[i, :k] = 1
        mask[i, :k] = torch.tensor(t.loss_mask, dtype=torch.float32)
        beh[i, :k] = torch.tensor(t.logprobs, dtype=torch.float32)
    return TokenBatch(ids, attn, mask[:, 1:], beh[:, 1:])


def model_logprobs(model, batch: TokenBatch, temperature: float = 1.0):
    """Log-prob [N, T-1] of each next token under ``model`` (tempered as the sampler was), and the
    entropy [N, T-1] of the predicted distribution."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return token_logprobs(out.logits[:, :-1], batch.input_ids[:, 1:], temperature)


@torch.no_grad()
def model_logprobs_chunked(
    model, batch: TokenBatch, chunk: int, temperature: float = 1.0
) -> torch.Tensor:
    parts = []
    for s in range(0, batch.input_ids.shape[0], chunk):
        idx = torch.arange(s, min(s + chunk, batch.input_ids.shape[0]))
        parts.append(model_logprobs(model, batch.select(idx), temperature)[0])
    return torch.cat(parts)
