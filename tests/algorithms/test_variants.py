"""RLOO / REINFORCE++ advantages and the GRPO loss types, against values worked out by hand."""

import math

import pytest
import torch

from agentrl.algorithms import functional as F
from agentrl.algorithms.grpo import GRPO
from agentrl.algorithms.reinforce_pp import ReinforcePP
from agentrl.algorithms.rloo import RLOO


def test_leave_one_out_advantages_by_hand():
    # group 0: rewards 1, 0, 0, 1; sum 2, n 4: A_i = r_i - (2 - r_i) / 3
    #   r=1: 1 - 1/3 = 2/3;  r=0: 0 - 2/3 = -2/3
    # group 1: rewards 3, 1: A = 3 - 1 = 2 and 1 - 3 = -2
    # group 2: a single sample has no "others": 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 5.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    adv = RLOO(group_size=4).episode_advantages(rewards, groups)
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 2.0, -2.0, 0.0])
    assert torch.allclose(adv, expected, atol=1e-6)
    # the identity A_i = n / (n - 1) * (r_i - mean): group 0, 4/3 * 0.5 = 2/3
    assert adv[0].item() == pytest.approx(4 / 3 * 0.5)


def test_reinforce_pp_normalizes_over_the_batch_not_the_group():
    # rewards 0, 1 | 2, 3 in two groups. Batch mean 1.5; unbiased batch std
    # sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3) = 1.290994
    # A = (-1.5, -0.5, 0.5, 1.5) / 1.290994 = (-1.161895, -0.387298, 0.387298, 1.161895)
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1])
    adv = ReinforcePP(group_size=2).episode_advantages(rewards, groups)
    assert torch.allclose(adv, torch.tensor([-1.161895, -0.387298, 0.387298, 1.161895]), atol=1e-5)
    # per group (GRPO) the second group would look exactly like the first: -+0.7071 both
    grpo = F.group_advantages(rewards, groups)
    assert torch.allclose(grpo, torch.tensor([-0.70711, 0.70711, -0.70711, 0.70711]), atol=1e-4)
    # REINFORCE++-baseline: group-centred first, (-0.5, 0.5, -0.5, 0.5), mean 0,
    # std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.866025
    adv = ReinforcePP(group_size=2, group_baseline=True).episode_advantages(rewards, groups)
    assert torch.allclose(adv, torch.tensor([-0.866025, 0.866025, -0.866025, 0.866025]), atol=1e-5)
    # all-equal rewards: no signal, no division by zero
    assert F.batch_advantages(torch.ones(3), torch.arange(3)).tolist() == [0.0, 0.0, 0.0]


def test_dynamic_sampling_keep_mask_by_hand():
    # group 0 all 1 (solved) -> drop; group 1 {0, 1} -> keep; group 2 all 2 -> drop;
    # group 3 a single sample (zero variance) -> drop
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 5.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    keep = GRPO(dynamic_sampling=True).keep_mask(rewards, groups)
    assert keep.tolist() == [False, False, True, True, False, False, False]
    # how the module counts dropped groups: 0, 2 and 3
    assert torch.unique(groups[~keep]).numel() == 3
    assert GRPO().keep_mask(rewards, groups).all()
    assert RLOO(dynamic_sampling=True).keep_mask(rewards, groups).tolist() == keep.tolist()


def _two_episodes():
    # width T = 4; episode 0 generated 3 tokens, episode 1 one token; ratio 1 everywhere
    # (logp == old), advantages +1 and -2, so each token's loss is -A: -1 (x3) and +2 (x1)
    logp = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    return logp, mask, torch.tensor([1.0, -2.0])


def test_the_three_aggregations_of_the_loss_types_by_hand():
    logp, mask, adv = _two_episodes()
    # grpo, per-sequence mean: mean(-3/3, 2/1) = 0.5
    loss, _ = GRPO(loss_type="grpo").loss(logp, logp, None, adv, mask)
    assert loss.item() == pytest.approx(0.5)
    # dr_grpo, token sums over max_completion_length 8: mean(-3/8, 2/8) = -1/16
    algo = GRPO(loss_type="dr_grpo", scale_rewards=False, max_completion_length=8)
    loss, _ = algo.loss(logp, logp, None, adv, mask)
    assert loss.item() == pytest.approx(-0.0625)
    # dapo, token mean over the batch: (-3 + 2) / 4 = -0.25
    loss, _ = GRPO(loss_type="dapo").loss(logp, logp, None, adv, mask)
    assert loss.item() == pytest.approx(-0.25)
    # (the longer episode weighs 3x in dapo, 1x in grpo; dr_grpo does not depend on T = 4:
    # without a constant it would be mean(-3/4, 2/4) = -0.125)
    assert F.aggregate(-adv.unsqueeze(-1) * mask, mask, "seq_mean_token_sum_norm").item() == -0.125


def test_dapo_clip_higher_by_hand():
    # one token per episode, old logprob 0, clip 0.2 low / 0.28 high, token mean
    # ep0: ratio 1.5,  A=+1 -> min(1.5, 1.28) = 1.28 -> -1.28 (clipped)
    # ep1: ratio 0.5,  A=-1 -> min(-0.5, -0.8) = -0.8 -> 0.8 (clipped)
    # ep2: ratio 1.25, A=+1 -> inside [0.8, 1.28] -> -1.25 (a symmetric 0.2 would clip it to 1.2)
    # loss = (-1.28 + 0.8 - 1.25) / 3 = -0.576667; clipfrac 2/3
    logp = torch.log(torch.tensor([[1.5], [0.5], [1.25]]))
    adv = torch.tensor([1.0, -1.0, 1.0])
    algo = GRPO(loss_type="dapo", clip_low=0.2, clip_high=0.28)
    loss, stats = algo.loss(logp, torch.zeros(3, 1), None, adv, torch.ones(3, 1))
    assert loss.item() == pytest.approx(-0.576667, abs=1e-5)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)


def test_gspo_sequence_ratio_by_hand():
    # old logprobs 0; the third position is padding (masked; its 5.0 must not count)
    # ep0 token ratios 1.21, 1.0: s = exp(mean(log 1.21, 0)) = sqrt(1.21) = 1.1 (geometric mean)
    #   A=+1, clip_high 0.05: min(1.1, 1.05) = 1.05 -> loss -1.05, clipped: no gradient
    # ep1 token ratios 0.81, 1.0: s = 0.9, A=+1, inside [0.8, 1.05] -> loss -0.9
    # loss = mean(-1.05, -0.9) = -0.975
    # gradient of ep1's tokens: d(-s)/d logp_t = -s / |y| = -0.45, / 2 episodes = -0.225
    logp = torch.log(torch.tensor([[1.21, 1.0, 1.0], [0.81, 1.0, 1.0]]))
    logp[:, 2] = 5.0
    logp.requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    algo = GRPO(loss_type="gspo", clip_low=0.2, clip_high=0.05)
    loss, stats = algo.loss(logp, torch.zeros(2, 3), None, torch.tensor([1.0, 1.0]), mask)
    assert loss.item() == pytest.approx(-0.975, abs=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [-0.225, -0.225, 0.0]]))
    # half of the tokens belong to the clipped sequence
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    # the token-level ratio would clip 1.21 alone: ep0 = -(1.05 + 1.0) / 2 = -1.025, not -1.05
    token_loss, _ = GRPO(loss_type="grpo", clip_low=0.2, clip_high=0.05).loss(
        logp.detach(), torch.zeros(2, 3), None, torch.tensor([1.0, 0.0]), mask
    )
    assert token_loss.item() == pytest.approx(-1.025 / 2, abs=1e-6)


def test_micro_batches_recombine_to_the_minibatch_loss():
    # sum over micro-batches of aggregate(micro) * w(micro) / w(minibatch) == aggregate(minibatch)
    # for every aggregation, with uneven lengths and one row without generated tokens
    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 5, generator=g)
    mask = (torch.arange(5) < torch.tensor([[5], [2], [0], [4], [1], [3]])).float()
    for mode in F.AGGREGATIONS:
        full = F.aggregate(values, mask, mode, 7)
        total_w = F.aggregation_weight(mask, mode)
        parts = sum(
            F.aggregate(values[i], mask[i], mode, 7) * F.aggregation_weight(mask[i], mode) / total_w
            for i in torch.arange(6).split(4)
        )
        assert parts.item() == pytest.approx(full.item(), abs=1e-6), mode


def test_every_algorithm_has_the_same_interface():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 1, 1])
    logp, mask = torch.full((4, 3), math.log(0.5)), torch.ones(4, 3)
    for algo in (GRPO(group_size=2, kl_coef=0.0), RLOO(group_size=2), ReinforcePP(group_size=2)):
        adv = algo.episode_advantages(rewards, groups)
        loss, stats = algo.loss(logp, logp, None, adv, mask)
        assert adv.shape == (4,) and loss.dim() == 0 and "policy" in stats
        assert algo.keep_mask(rewards, groups).all()
        assert not algo.needs_reference
        assert {"epochs", "minibatches", "max_grad_norm", "group_size"} <= set(vars(algo))


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (GRPO, {"loss_type": "ppo"}, "loss_type must be one of"),
        (GRPO, {"loss_type": "dr_grpo", "scale_rewards": False}, "needs algorithm.max_comp"),
        (GRPO, {"loss_type": "dr_grpo", "max_completion_length": 8}, "scale_rewards=false"),
        (GRPO, {"loss_type": "dapo", "aggregation": "seq_mean_token_mean"}, "aggregates by"),
        (GRPO, {"kl_mode": "advantage"}, "kl_mode must be one of"),
        (GRPO, {"kl_target": 6.0, "kl_coef": 0.0}, "starting kl_coef > 0"),
        (GRPO, {"tis_cap": 0.0}, "tis_cap must be > 0"),
        (RLOO, {"group_size": 1}, "group_size must be >= 2 for RLOO"),
        (ReinforcePP, {"group_size": 0}, "group_size must be >= 1"),
        (ReinforcePP, {"group_size": 1, "group_baseline": True}, "needs group_size >= 2"),
        (ReinforcePP, {"aggregation": "sum"}, "aggregation must be one of"),
    ],
)
def test_bad_values_raise_clear_messages(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("dr_grpo", {"loss_type": "dr_grpo", "scale_rewards": False, "max_completion_length": 512}),
        ("dapo", {"aggregation": "token_mean", "clip_high": 0.28, "dynamic_sampling": True}),
        ("gspo", {"loss_type": "gspo", "clip_low": 3e-4, "clip_high": 4e-4}),
        ("rloo", {"kl_mode": "reward", "kl_estimator": "k1"}),
        ("reinforce_pp", {"aggregation": "token_mean", "group_baseline": False}),
    ],
)
def test_configs_build_the_variant(make_cfg, option, expected):
    from agentrl.utils.instantiate import instantiate

    cfg = make_cfg(f"algorithm={option}")
    algo = instantiate(cfg.algorithm, "algorithm")
    assert {k: getattr(algo, k) for k in expected} == expected
