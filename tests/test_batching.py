"""Log-probs of a model on a token batch: the logits of prompt positions are not computed."""

from __future__ import annotations

import functools

import pytest
import torch

from agentrl.batching import TokenBatch, first_loss_column, model_logprobs
from agentrl.models.factory import tiny_random_model


def batch(starts: list[int], width: int = 12, vocab: int = 50) -> TokenBatch:
    """Episodes whose generated tokens begin at ``starts`` (loss-mask columns)."""
    g = torch.Generator().manual_seed(0)
    n = len(starts)
    ids = torch.randint(3, vocab, (n, width), generator=g)
    attn = torch.ones(n, width, dtype=torch.long)
    attn[0, width - 2 :] = 0  # one right-padded episode
    mask = torch.zeros(n, width - 1)
    for i, s in enumerate(starts):
        mask[i, s:] = 1
    mask = mask * attn[:, 1:]
    return TokenBatch(ids, attn, mask, torch.zeros(n, width - 1))


def full_logprobs(model, b: TokenBatch):
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    logp = torch.log_softmax(out.logits[:, :-1].float(), -1)
    return logp.gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)


def test_first_loss_column():
    assert first_loss_column(batch([5, 3, 7]).loss_mask) == 3
    assert first_loss_column(torch.zeros(2, 6)) == 0


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_trimmed_logits_give_the_full_pass_log_probs(family):
    model, _ = tiny_random_model(family, seed=0)
    model.eval()
    b = batch([5, 3, 7])
    want = full_logprobs(model, b)
    calls = []
    real = model.forward

    @functools.wraps(real)  # keeps the signature that says it takes logits_to_keep
    def spy(*args, **kwargs):
        calls.append(kwargs.get("logits_to_keep"))
        return real(*args, **kwargs)

    model.forward = spy
    with torch.no_grad():
        logp, entropy = model_logprobs(model, b)
    # the first generated column is 3: logits of positions 3..11 only (9 of 12)
    assert calls == [12 - 3]
    assert logp.shape == entropy.shape == b.loss_mask.shape
    assert torch.allclose(logp[:, 3:], want[:, 3:], atol=1e-5)
    assert (logp[:, :3] == 0).all() and (entropy[:, :3] == 0).all()
    assert (entropy[:, 3:] > 0).all()


def test_gradients_flow_through_the_trimmed_log_probs():
    model, _ = tiny_random_model("qwen2", seed=0)
    b = batch([4, 4])
    logp, entropy = model_logprobs(model, b)
    assert not entropy.requires_grad
    (logp * b.loss_mask).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
