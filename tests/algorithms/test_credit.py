"""Credit assignment (trajectory / turn / transition) on constructed two-turn episodes."""

import math

import pytest
import torch

from agentrl.algorithms import credit as C
from agentrl.algorithms.grpo import GRPO
from agentrl.algorithms.reinforce_pp import ReinforcePP
from agentrl.algorithms.rloo import RLOO
from agentrl.batching import collate
from agentrl.types import Task, Trajectory, Turn

# token layout of a two-turn episode (T = 7): prompt 0-1, turn 0 at 2-3, observation 4, turn 1
# at 5-6. In the [N, T-1] columns of TokenBatch, turn 0 is columns 1-2 and turn 1 columns 4-5.
TURN0_COLS, TURN1_COLS = [1, 2], [4, 5]


def episode(turn_rewards, final, spans=((2, 4), (5, 7)), group=0) -> Trajectory:
    width = spans[-1][1]
    mask = [0] * width
    for s, e in spans:
        mask[s:e] = [1] * (e - s)
    turns = [Turn(f"a{i}", "obs", r, span) for i, (r, span) in enumerate(zip(turn_rewards, spans))]
    return Trajectory(
        task=Task("t", "p"),
        token_ids=list(range(1, width + 1)),
        loss_mask=mask,
        logprobs=[0.0] * width,
        prompt_len=2,
        turns=turns,
        reward=final,
        group=group,
    )


def helpful_pair():
    # both episodes solve the task (final reward 1.0); A's first turn earned a per-turn reward of
    # 0.5 from the env (a helpful tool call), B's did not. The env's last-step reward (here 1.0)
    # is replaced by the scored episode reward on the last turn.
    return [episode([0.5, 1.0], 1.0), episode([0.0, 1.0], 1.0)]


def advantages(algo, trajs):
    rewards = torch.tensor([t.reward for t in trajs])
    groups = torch.tensor([t.group for t in trajs])
    return algo.token_advantages(trajs, rewards, groups, width=6)


def test_turn_credits_the_helpful_turn_and_trajectory_does_not():
    trajs = helpful_pair()
    # trajectory: equal episode rewards -> GRPO advantage 0, broadcast to every token ([N])
    traj_adv = advantages(GRPO(group_size=2), trajs)
    assert traj_adv.shape == (2,) and traj_adv.tolist() == [0.0, 0.0]
    # turn (turn_gamma 1): returns A = [0.5 + 1.0, 1.0] = [1.5, 1.0], B = [1.0, 1.0].
    #   turn 0: {1.5, 1.0}, mean 1.25, unbiased std sqrt(2 * 0.25^2 / 1) = 0.353553
    #           -> A +0.25 / 0.353553 = +0.707107, B -0.707107
    #   turn 1: {1.0, 1.0} -> 0 for both
    turn_adv = advantages(GRPO(group_size=2, credit="turn"), trajs)
    assert turn_adv.shape == (2, 6)
    a = 0.707107
    assert turn_adv[0, TURN0_COLS].tolist() == pytest.approx([a, a], abs=1e-5)
    assert turn_adv[1, TURN0_COLS].tolist() == pytest.approx([-a, -a], abs=1e-5)
    assert turn_adv[:, TURN1_COLS].abs().max() < 1e-6
    # the helpful turn's tokens get more under turn than under trajectory
    assert (turn_adv[0, TURN0_COLS] > traj_adv[0]).all()
    # non-generated columns (prompt, observation) get nothing
    assert turn_adv[:, [0, 3]].abs().max() == 0


def test_turn_baseline_only_over_episodes_that_reached_the_turn():
    # A, B two turns as above; C stopped after one turn with final reward 0 (span 2-4 only).
    trajs = [*helpful_pair(), episode([0.0], 0.0, spans=((2, 4),))]
    # turn_gamma 0.5, no std scaling (scale_rewards false):
    #   returns A = [0.5 + 0.5 * 1.0, 1.0] = [1.0, 1.0]; B = [0 + 0.5 * 1.0, 1.0] = [0.5, 1.0];
    #   C = [0.0]
    #   turn 0: {1.0, 0.5, 0.0}, mean 0.5 -> A +0.5, B 0.0, C -0.5
    #   turn 1: only A and B reached it: {1.0, 1.0}, mean 1.0 -> 0, 0
    algo = GRPO(group_size=3, credit="turn", turn_gamma=0.5, scale_rewards=False)
    adv = advantages(algo, trajs)
    assert adv[:, 1].tolist() == pytest.approx([0.5, 0.0, -0.5])
    assert adv[:2, TURN1_COLS].abs().max() < 1e-6


def test_turn_groups_are_separate():
    # the same two episodes in different groups: each is alone at every turn -> 0 everywhere
    a, b = helpful_pair()
    b.group = 1
    adv = advantages(RLOO(group_size=2, credit="turn"), [a, b])
    assert adv.abs().max() == 0


def test_token_columns_match_the_loss_mask():
    trajs = helpful_pair()
    batch = collate(trajs, pad_id=0)
    ones = C.spread([[1.0, 1.0], [1.0, 1.0]], trajs, width=batch.loss_mask.shape[1])
    assert torch.equal(ones, batch.loss_mask)


def test_transition_weights_sum_to_one_per_episode():
    # turns of 1 and 3 tokens (spans 2-3 and 4-7, columns 1 and 3-5): each turn holds 1/2 of the
    # episode: turn 0: 1 / (2 * 1) = 0.5 on its one token; turn 1: 1 / (2 * 3) = 1/6 on each
    uneven = episode([0.0, 1.0], 1.0, spans=((2, 3), (4, 7)))
    w = C.transition_weights([uneven, *helpful_pair()], width=6)
    assert w.sum(-1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert w[0].tolist() == pytest.approx([0, 0.5, 0, 1 / 6, 1 / 6, 1 / 6])
    # two turns of two tokens: 1 / (2 * 2) = 0.25 each
    assert w[1, TURN0_COLS + TURN1_COLS].tolist() == pytest.approx([0.25] * 4)


def test_transition_advantages_average_back_to_the_episode_advantage():
    # episode advantage 2.0 on the uneven episode (4 generated tokens): the advantages become
    # 2.0 * w * 4 = [4.0, 4/3, 4/3, 4/3] (columns 1, 3, 4, 5); their token mean (what seq_mean_token_mean takes of a
    # ratio-1 surrogate) is (4 + 4) / 4 = 2.0, the episode's advantage, whatever its turn count.
    uneven = episode([0.0, 1.0], 1.0, spans=((2, 3), (4, 7)))
    adv = C.reweight_transitions(torch.tensor([2.0]), [uneven], width=6)
    assert adv[0].tolist() == pytest.approx([0, 4.0, 0, 4 / 3, 4 / 3, 4 / 3])
    mask = collate([uneven], 0).loss_mask
    assert float((adv * mask).sum() / mask.sum()) == pytest.approx(2.0)


def test_trajectory_and_token_advantages_give_the_same_loss():
    # the loss takes [N] or [N, T] advantages; broadcasting [N] by hand changes nothing
    torch.manual_seed(0)
    logp, old = torch.randn(2, 6), torch.randn(2, 6)
    mask = collate(helpful_pair(), 0).loss_mask
    adv = torch.tensor([1.0, -0.5])
    algo = GRPO(group_size=2, kl_coef=0.0)
    a, _ = algo.loss(logp, old, None, adv, mask)
    b, _ = algo.loss(logp, old, None, adv[:, None].expand(2, 6), mask)
    assert torch.allclose(a, b)


def test_bad_credit_settings_fail_early():
    with pytest.raises(ValueError, match="algorithm.credit must be one of"):
        GRPO(credit="episode")
    with pytest.raises(ValueError, match="needs\nalgorithm.aggregation|seq_mean_token_mean"):
        ReinforcePP(credit="transition")
    with pytest.raises(ValueError, match="turn_gamma"):
        RLOO(credit="turn", turn_gamma=1.5)
    ReinforcePP(credit="transition", aggregation="seq_mean_token_mean")


@pytest.mark.slow
@pytest.mark.parametrize("credit", ["turn", "transition"])
def test_credit_smoke_run(make_cfg, tmp_path, credit, monkeypatch):
    """A run under turn/transition credit updates with token-level advantages ([N, T-1], one
    per loss-mask column, finite and not all zero) and logs a finite policy loss."""
    import csv

    from omegaconf import open_dict

    from agentrl.train import run

    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    seen = []
    real = GRPO.token_advantages

    def spy(self, trajs, rewards, groups, width):
        adv = real(self, trajs, rewards, groups, width)
        seen.append((adv, width))
        return adv

    monkeypatch.setattr(GRPO, "token_advantages", spy)
    cfg = make_cfg("debug=smoke", f"algorithm.credit={credit}", "callbacks.export=null")
    with open_dict(cfg):
        # differs between episodes whatever the model, so the advantages are not all zero
        cfg.reward = {"_target_": "tests.test_train.LengthReward"}
    run(cfg)
    assert seen, "no advantages were computed"
    for adv, width in seen:
        assert adv.dim() == 2 and adv.shape[1] == width
        assert torch.isfinite(adv).all()
    assert any(adv.abs().sum() > 0 for adv, _ in seen)
    with open(tmp_path / "run" / "metrics.csv") as f:
        losses = [float(r["loss/policy"]) for r in csv.DictReader(f) if r.get("loss/policy")]
    assert losses and all(math.isfinite(x) for x in losses)
