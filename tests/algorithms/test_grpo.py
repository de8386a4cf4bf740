"""GRPO advantages and losses against values worked out by hand."""

import math

import pytest
import torch

from agentrl.algorithms import functional as F
from agentrl.algorithms.grpo import GRPO


def test_group_advantages_by_hand():
    # group 0: rewards 1, 0, 0, 1 -> mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = 0.57735
    # so the advantages are +-0.5 / 0.57735 = +-0.86603.
    # group 1: rewards 2, 2 -> identical -> 0 (no signal, no division by zero)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = F.group_advantages(rewards, groups, scale=True)
    expected = torch.tensor([0.86603, -0.86603, -0.86603, 0.86603, 0.0, 0.0])
    assert torch.allclose(adv, expected, atol=1e-4)
    # without scaling: only centred
    adv = F.group_advantages(rewards, groups, scale=False)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]))


def test_clipped_loss_by_hand():
    # one token per episode, old logprob 0.
    # ep0: ratio 1.5, A=+1 -> min(1.5, clip 1.2) = 1.2 -> loss -1.2 (clipped)
    # ep1: ratio 1.5, A=-1 -> min(-1.5, -1.2) = -1.5 -> loss 1.5 (not clipped: pessimistic side)
    # ep2: ratio 0.5, A=+1 -> min(0.5, 0.8) = 0.5 -> loss -0.5 (not clipped)
    # ep3: ratio 0.5, A=-1 -> min(-0.5, -0.8) = -0.8 -> loss 0.8 (clipped)
    # token mean = (-1.2 + 1.5 - 0.5 + 0.8) / 4 = 0.15; clipfrac = 2/4
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]]))
    old = torch.zeros(4, 1)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    mask = torch.ones(4, 1)
    loss, stats = F.clipped_policy_loss(logp, old, adv, mask, 0.2, 0.2, "token_mean")
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_aggregation_modes_by_hand():
    # per-token values; row 0 has 3 generated tokens, row 1 has 1, the rest masked
    v = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # token_mean: (1+2+3+4)/4 = 2.5
    assert F.aggregate(v, m, "token_mean").item() == pytest.approx(2.5)
    # seq_mean_token_mean: mean(2, 4) = 3
    assert F.aggregate(v, m, "seq_mean_token_mean").item() == pytest.approx(3.0)
    # seq_mean_token_sum_norm: mean(6/4, 4/4) = 1.25
    assert F.aggregate(v, m, "seq_mean_token_sum_norm").item() == pytest.approx(1.25)


def test_masked_tokens_get_no_gradient():
    logp = torch.zeros(1, 4, requires_grad=True)
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    loss, _ = F.clipped_policy_loss(
        logp, torch.zeros(1, 4), torch.tensor([1.0]), mask, 0.2, 0.2, "token_mean"
    )
    loss.backward()
    # d/dlogp of -ratio*A at ratio 1 is -1 per token, divided by 2 masked-in tokens
    assert logp.grad.tolist() == [[0.0, -0.5, 0.0, -0.5]]


def test_kl_estimators_by_hand():
    # log r = logp - ref = log(2) -> k1 = 0.6931, k2 = 0.2402, k3 = 1/2 - 1 + 0.6931 = 0.1931
    logp, ref = torch.tensor([math.log(2.0)]), torch.tensor([0.0])
    assert F.kl_penalty(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-5)
    assert F.kl_penalty(logp, ref, "k2").item() == pytest.approx(0.240227, abs=1e-5)
    assert F.kl_penalty(logp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-5)


def test_grpo_loss_adds_kl_when_configured():
    algo = GRPO(group_size=2, kl_coef=0.5, aggregation="token_mean")
    logp = torch.tensor([[math.log(2.0)]])
    # policy part at ratio 1 (old = logp), A = 1: -1; KL k3 vs ref 0: 0.193147 * 0.5
    loss, stats = algo.loss(
        logp, logp.clone(), torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1)
    )
    assert loss.item() == pytest.approx(-1.0 + 0.5 * 0.193147, abs=1e-5)
    assert "kl_ref" in stats


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group_size": 1}, "group_size must be >= 2"),
        ({"kl_estimator": "k9"}, "kl_estimator must be one of"),
        ({"aggregation": "sum"}, "aggregation must be one of"),
        ({"epochs": 0}, "epochs must be >= 1"),
    ],
)
def test_bad_values_raise_clear_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GRPO(**kwargs)


def test_identical_rewards_give_exactly_zero_even_when_not_representable():
    # -0.6 is not exact in float32: r - mean(r) is rounding noise, which must not be scaled up
    rewards = torch.full((8,), -0.6)
    assert F.group_advantages(rewards, torch.zeros(8, dtype=torch.long)).abs().max().item() == 0.0
