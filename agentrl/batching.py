"""Trajectories to padded tensors, and per-token log-probs of a model on them."""

from __future__ import annotations

import inspect
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

    def narrow(self, width: int) -> TokenBatch:
        """The first ``width`` token columns (``width - 1`` of the next-token fields)."""
        return TokenBatch(
            self.input_ids[:, :width],
            self.attention_mask[:, :width],
            self.loss_mask[:, : width - 1],
            self.behaviour_logprobs[:, : width - 1],
        )

    def used_width(self) -> int:
        """Columns up to the longest episode's last token (right padding beyond it)."""
        cols = self.attention_mask.any(0).nonzero()
        return int(cols[-1]) + 1 if len(cols) else self.input_ids.shape[1]

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


def base_forward(model):
    """The forward of the underlying transformers model (through a peft wrapper, if any)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.forward


def takes_logits_to_keep(model) -> bool:
    """Whether the underlying transformers model can compute the logits of the last k positions
    only (``logits_to_keep``)."""
    return "logits_to_keep" in inspect.signature(base_forward(model)).parameters


def first_loss_column(loss_mask: torch.Tensor) -> int:
    """The first column [of ``loss_mask`` N, T-1] where any episode has a generated token."""
    cols = loss_mask.any(0).nonzero()
    return int(cols[0]) if len(cols) else 0


def model_logprobs(model, batch: TokenBatch, temperature: float = 1.0):
    """Log-prob [N, T-1] of each next token under ``model`` (tempered as the sampler was), and the
    entropy [N, T-1] of the predicted distribution.

    The logits (a [N, T, vocab] float32 tensor: the largest of the pass for a real vocabulary)
    are computed only from the first column any episode generates at, where the model takes
    ``logits_to_keep``: the prompt positions before it carry no loss. Their log-probs and
    entropy are 0."""
    start = first_loss_column(batch.loss_mask)
    kwargs = {}
    if start > 0 and takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = batch.input_ids.shape[1] - start
    else:
        start = 0
    out = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **kwargs
    )
    logp, entropy = token_logprobs(out.logits[:, :-1], batch.input_ids[:, start + 1 :], temperature)
    if start:
        pad = (start, 0)
        logp, entropy = torch.nn.functional.pad(logp, pad), torch.nn.functional.pad(entropy, pad)
    return logp, entropy


@torch.no_grad()
def model_logprobs_chunked(
    model, batch: TokenBatch, chunk: int, temperature: float = 1.0
) -> torch.Tensor:
    parts = []
    for s in range(0, batch.input_ids.shape[0], chunk):
        idx = torch.arange(s, min(s + chunk, batch.input_ids.shape[0]))
        parts.append(model_logprobs(model, batch.select(idx), temperature)[0])
    return torch.cat(parts)
