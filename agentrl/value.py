"""The value function of PPO: a linear head on a transformer's last hidden state.

``value_head: shared`` puts the head on the policy's own trunk (one forward gives log-probs and
values; the value loss also trains the trunk). ``value_head: separate`` is a critic of its own: a
copy of the policy (backbone and, for LoRA runs, its adapter) with its own head. With LoRA the
copy's base weights stay frozen like the policy's, so the separate critic trains only its adapter
copy and its head; under FSDP the backbone and the head are sharded as roots of their own.

Values are aligned with ``TokenBatch.loss_mask``: column t is V(tokens 0..t), the value of the state
in which the token at t + 1 is generated. Shapes: N episodes, T tokens, H hidden size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from agentrl.algorithms.functional import token_logprobs
from agentrl.batching import TokenBatch, model_logprobs

VALUE_HEADS = ("shared", "separate")


class ValueHead(nn.Module):
    """hidden [N, T, H] -> values [N, T] (float32). Zero-initialised: every value starts at 0."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


class Critic(nn.Module):
    """The value head and, for a separate critic, its own backbone (None: the policy's trunk)."""

    def __init__(self, head: ValueHead, backbone: nn.Module | None = None):
        super().__init__()
        self.head = head
        self.backbone = backbone


def hidden_size(model) -> int:
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.hidden_size)


def build_critic(policy, value_head: str) -> Critic:
    """A ``Critic`` for ``policy``: ``shared`` (a head only) or ``separate`` (a copy + a head)."""
    if value_head not in VALUE_HEADS:
        raise ValueError(f"algorithm.value_head must be one of {VALUE_HEADS}, got {value_head!r}")
    backbone = copy.deepcopy(policy) if value_head == "separate" else None
    return Critic(ValueHead(hidden_size(policy)), backbone)


def _hidden_forward(model, batch: TokenBatch):
    return model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
        output_hidden_states=True,
    )


def values(model, head: ValueHead, batch: TokenBatch) -> torch.Tensor:
    """V [N, T-1] of ``model``'s last hidden state through ``head``."""
    out = _hidden_forward(model, batch)
    return head(out.hidden_states[-1][:, :-1])


def forward(policy, critic: Critic | None, batch: TokenBatch, temperature: float = 1.0):
    """Log-probs [N, T-1], entropy [N, T-1] and values [N, T-1] (None without a critic).

    A shared head reads the policy's own forward pass, so log-probs and values cost one pass.
    """
    if critic is None:
        return (*model_logprobs(policy, batch, temperature), None)
    if critic.backbone is not None:
        logp, entropy = model_logprobs(policy, batch, temperature)
        return logp, entropy, values(critic.backbone, critic.head, batch)
    out = _hidden_forward(policy, batch)
    logp, entropy = token_logprobs(out.logits[:, :-1], batch.input_ids[:, 1:], temperature)
    return logp, entropy, critic.head(out.hidden_states[-1][:, :-1])


@torch.no_grad()
def forward_chunked(policy, critic: Critic, batch: TokenBatch, chunk: int, temperature: float):
    """Old log-probs and old values [N, T-1], ``chunk`` episodes per pass (the score phase)."""
    logps, vals = [], []
    for s in range(0, batch.input_ids.shape[0], chunk):
        idx = torch.arange(s, min(s + chunk, batch.input_ids.shape[0]))
        logp, _, v = forward(policy, critic, batch.select(idx), temperature)
        logps.append(logp)
        vals.append(v.float())
    return torch.cat(logps), torch.cat(vals)
