"""KL in the reward, the adaptive KL controller and truncated importance weights, by hand."""

import math

import pytest
import torch

from agentrl.algorithms import functional as F
from agentrl.algorithms.grpo import GRPO
from agentrl.algorithms.kl import KLController
from agentrl.algorithms.rloo import RLOO


def _kl_batch():
    # episode 0: two generated tokens, log r = log 2 each; k1 sum = 2 log 2 = 1.386294
    # episode 1: one generated token with log r = -0.5 (the 3.0 is masked): k1 sum = -0.5
    logp = torch.tensor([[math.log(2.0), math.log(2.0)], [-0.5, 3.0]])
    ref = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    return logp, ref, mask


def test_kl_in_reward_by_hand():
    logp, ref, mask = _kl_batch()
    rewards = torch.tensor([1.0, 0.0])
    # coef 0.1: 1 - 0.1 * 1.386294 = 0.861371; 0 - 0.1 * (-0.5) = 0.05
    algo = RLOO(group_size=2, kl_coef=0.1, kl_estimator="k1", kl_mode="reward")
    adjusted = algo.kl_in_reward(rewards, logp, ref, mask)
    assert torch.allclose(adjusted, torch.tensor([0.861371, 0.05]), atol=1e-6)
    # the per-episode KL itself, k3: ep0 2 * (1/2 - 1 + log 2) = 0.386294;
    # ep1 e^0.5 - 1 - 0.5 = 0.148721
    seq = F.sequence_kl(logp, ref, mask, "k3")
    assert torch.allclose(seq, torch.tensor([0.386294, 0.148721]), atol=1e-6)
    # kl_mode=loss leaves the rewards alone (the module may call kl_in_reward unconditionally)
    algo = GRPO(kl_coef=0.1, kl_mode="loss")
    assert algo.kl_in_reward(rewards, logp, ref, mask) is rewards
    with pytest.raises(ValueError, match="kl_mode=reward needs"):
        RLOO(kl_coef=0.1).kl_in_reward(rewards, None, None, None)


def test_reward_mode_keeps_the_kl_out_of_the_loss():
    # log r = log 2, k3 = 0.193147; policy part at ratio 1 with A = 1 is -1
    logp = torch.tensor([[math.log(2.0)]])
    args = (logp, logp.clone(), torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    loss, stats = GRPO(kl_coef=0.5, kl_mode="reward").loss(*args)
    assert loss.item() == pytest.approx(-1.0)
    # still reported
    assert stats["kl_ref"].item() == pytest.approx(0.193147, abs=1e-5)
    loss, _ = GRPO(kl_coef=0.5, kl_mode="loss").loss(*args)
    assert loss.item() == pytest.approx(-1.0 + 0.5 * 0.193147, abs=1e-5)


def test_adaptive_kl_controller_by_hand():
    # Ziegler et al.: error = clip(kl / target - 1, -0.2, 0.2); value *= 1 + error * n / horizon
    ctl = KLController(0.1, target=6.0, horizon=10000)
    # kl 9: 9/6 - 1 = 0.5 -> clipped to 0.2; 64 episodes: 0.1 * (1 + 0.2 * 64 / 1e4) = 0.100128
    assert ctl.update(9.0, 64) == pytest.approx(0.100128)
    # kl 5.4: 0.9 - 1 = -0.1; 100 episodes: 0.100128 * (1 - 0.1 * 100 / 1e4) = 0.100027872
    assert ctl.update(5.4, 100) == pytest.approx(0.100027872)
    # a checkpoint round trip restores the adapted value
    fresh = KLController(0.1, target=6.0, horizon=10000)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.value == ctl.value
    # fixed: no target, no change
    fixed = KLController(0.1)
    assert fixed.update(100.0, 1000) == 0.1 and not fixed.adaptive


def test_the_loss_uses_the_adapted_coefficient():
    # kl_horizon 10 episodes; kl 12 vs target 6 -> error clipped to 0.2; 10 episodes:
    # 0.1 * (1 + 0.2 * 10 / 10) = 0.12. Loss = -1 + 0.12 * k3(log 2) = -1 + 0.12 * 0.193147
    algo = GRPO(kl_coef=0.1, kl_target=6.0, kl_horizon=10)
    algo.kl_controller.update(12.0, 10)
    logp = torch.tensor([[math.log(2.0)]])
    loss, stats = algo.loss(logp, logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(-1.0 + 0.12 * 0.193147, abs=1e-6)
    assert stats["kl_coef"].item() == pytest.approx(0.12)
    restored = GRPO(kl_coef=0.1, kl_target=6.0, kl_horizon=10)
    restored.load_state_dict(algo.state_dict())
    assert restored.kl_controller.value == pytest.approx(0.12)


def test_tis_weights_and_their_use_in_the_loss_by_hand():
    # old log 0.5 everywhere; behaviour 0.25, 0.5, 1.0 -> exp(old - behaviour) = 2, 1, 0.5;
    # cap 1.5 -> 1.5, 1, 0.5; the third token is not generated -> 0
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.5, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w = F.tis_weights(old, behaviour, mask, cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 1.0, 0.0]]))
    # in the loss: ratio 1 (logp == old), A = 1 -> per token -1 * w; token mean (-1.5 - 1) / 2
    algo = GRPO(aggregation="token_mean", tis_cap=1.5)
    loss, stats = algo.loss(old, old, None, torch.tensor([1.0]), mask, behaviour_logprobs=behaviour)
    assert loss.item() == pytest.approx(-1.25)
    assert stats["tis_weight_mean"].item() == pytest.approx(1.25)
    assert stats["tis_capped_frac"].item() == pytest.approx(0.5)
    # off by default; set without behaviour log-probs it refuses rather than silently skip
    with pytest.raises(ValueError, match="no behaviour_logprobs"):
        algo.loss(old, old, None, torch.tensor([1.0]), mask)
