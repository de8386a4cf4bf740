"""PPO: GAE by hand and against a plain loop, the clipped value loss, and an end-to-end run."""

import csv
import random

import pytest
import torch

from agentrl.algorithms import credit as C
from agentrl.algorithms.ppo import PPO, explained_variance, gae, value_loss, whiten
from tests.algorithms.test_credit import helpful_pair


def test_gae_by_hand_skips_observation_tokens():
    # one row, 4 columns; column 2 is an observation token (mask 0) between two turns.
    # rewards [0, 0, 0, 1] (the episode reward on the last generated token), values
    # [0.5, 0.6, 9.0, 0.8], gamma 0.9, lam 0.5 (gamma * lam = 0.45):
    #   t=3: delta = 1 + 0.9 * 0 - 0.8 = 0.2                 A3 = 0.2
    #   t=2: skipped                                         A2 = 0
    #   t=1: next step is t=3: delta = 0 + 0.9 * 0.8 - 0.6 = 0.12;  A1 = 0.12 + 0.45 * 0.2 = 0.21
    #   t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04;            A0 = 0.04 + 0.45 * 0.21 = 0.1345
    #   returns = A + V on generated tokens: [0.6345, 0.81, 0, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 9.0, 0.8]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.1345, 0.21, 0.0, 0.2])
    assert ret[0].tolist() == pytest.approx([0.6345, 0.81, 0.0, 1.0])
    # lam = 1, gamma = 1: A_t = (sum of later rewards) - V_t, the Monte-Carlo advantage
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.5, 0.4, 0.0, 0.2])


def gae_loop(rewards, values, mask, gamma, lam):
    """The plain per-row loop over lists (cleanrl's GAE, on the masked steps only)."""
    adv = [[0.0] * len(r) for r in rewards]
    for n in range(len(rewards)):
        steps = [t for t in range(len(rewards[n])) if mask[n][t]]
        last = 0.0
        for i in reversed(range(len(steps))):
            t = steps[i]
            nxt = values[n][steps[i + 1]] if i + 1 < len(steps) else 0.0
            delta = rewards[n][t] + gamma * nxt - values[n][t]
            last = delta + gamma * lam * last
            adv[n][t] = last
    return adv


def test_vectorised_gae_matches_the_loop():
    rng = random.Random(0)
    n, t = 5, 17
    rewards = torch.tensor([[rng.gauss(0, 1) for _ in range(t)] for _ in range(n)])
    values = torch.tensor([[rng.gauss(0, 1) for _ in range(t)] for _ in range(n)])
    mask = torch.tensor([[float(rng.random() < 0.6) for _ in range(t)] for _ in range(n)])
    rewards = rewards * mask
    adv, ret = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    want = gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), 0.97, 0.9)
    assert torch.allclose(adv, torch.tensor(want), atol=1e-5)
    assert torch.allclose(ret, (torch.tensor(want) + values) * mask, atol=1e-5)


def test_value_loss_by_hand():
    # V 1.0, V_old 0.5, R 2.0, clip 0.2: unclipped (1 - 2)^2 = 1; V_clipped = 0.5 + 0.2 = 0.7,
    # (0.7 - 2)^2 = 1.69; 0.5 * max = 0.845.  V 0.6, V_old 0.5, R 0: inside the clip, 0.5 * 0.36
    values, old, ret = torch.tensor([1.0, 0.6]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0])
    assert value_loss(values, old, ret, 0.2).tolist() == pytest.approx([0.845, 0.18])
    # no clip: 0.5 * (1, 0.36)
    assert value_loss(values, old, ret, None).tolist() == pytest.approx([0.5, 0.18])


def test_explained_variance_and_whiten():
    ret = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(ret), ret, mask) == pytest.approx(0.0)
    # values off by a constant explain all the variance too
    assert explained_variance(ret + 5, ret, mask) == pytest.approx(1.0)
    w = whiten(ret, mask)
    # masked mean 2, unbiased std 1 -> [-1, 0, 1], padding stays 0
    assert w[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)


def test_token_rewards_on_last_generated_token():
    # spans (2, 4) and (5, 7): last tokens at ids 3 and 6 -> columns 2 and 5
    trajs = helpful_pair()
    rewards = torch.tensor([1.0, 1.0])
    r = C.token_rewards(trajs, rewards, "trajectory", 6)
    assert r[0].tolist() == [0, 0, 0, 0, 0, 1.0]
    # turn credit: A's helpful first turn (0.5) on column 2, the episode reward on column 5
    r = C.token_rewards(trajs, rewards, "turn", 6)
    assert r[0].tolist() == [0, 0, 0.5, 0, 0, 1.0]
    assert r[1].tolist() == [0, 0, 0, 0, 0, 1.0]


def test_ppo_accepts_group_size_one_and_checks_fields():
    assert PPO(group_size=1).needs_values
    for bad, match in [
        ({"value_head": "tied"}, "value_head"),
        ({"lam": 1.5}, "lam"),
        ({"vf_coef": 0.0}, "vf_coef"),
        ({"value_clip": -1.0}, "value_clip"),
        ({"group_size": 0}, "group_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            PPO(**bad)


def test_ppo_loss_adds_the_value_loss():
    torch.manual_seed(0)
    logp = torch.randn(2, 3)
    mask = torch.ones(2, 3)
    adv = torch.randn(2, 3)
    values, old_values, returns = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    algo = PPO(vf_coef=0.5, value_clip=None)
    loss, stats = algo.loss(
        logp, logp, None, adv, mask, values=values, old_values=old_values, returns=returns
    )
    # ratio 1 everywhere: the policy term is -mean(A); the value term 0.5 * mean(0.5 * (V - R)^2)
    want = -adv.mean() + 0.5 * (0.5 * (values - returns).pow(2)).mean()
    assert float(loss) == pytest.approx(float(want), abs=1e-6)
    assert float(stats["vf_loss"]) == pytest.approx(float((0.5 * (values - returns).pow(2)).mean()))


@pytest.mark.slow
@pytest.mark.parametrize("value_head", ["shared", "separate"])
def test_ppo_smoke_run_trains_the_value_head(make_cfg, tmp_path, monkeypatch, value_head):
    import agentrl.value as V
    from agentrl.train import run

    built = []
    real = V.build_critic

    def spy(policy, head):
        critic = real(policy, head)
        built.append((critic, {k: v.clone() for k, v in critic.head.state_dict().items()}))
        return critic

    monkeypatch.setattr(V, "build_critic", spy)
    # a step penalty makes rewards non-zero even when no task is solved, so the update runs
    cfg = make_cfg(
        "debug=smoke",
        "algorithm=ppo",
        f"algorithm.value_head={value_head}",
        "reward.step_penalty=0.1",
        "callbacks.export=null",
    )
    run(cfg)
    critic, before = built[0]
    after = critic.head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "value head unchanged"
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("loss/explained_variance") for r in rows)
    assert any(r.get("loss/vf_loss") for r in rows)
