"""DPO / IPO losses worked out by hand, the DPO algorithm's config checks and pair layout."""

import json
import math

import pytest
import torch

from agentrl.algorithms.dpo import (
    DPO,
    dpo_loss,
    ipo_loss,
    preference_logits,
    sequence_logprobs,
    split_pairs,
)


def test_sequence_logprobs_sum_generated_tokens_only():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -4.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    # row 0: -2 + -3 = -5 (the prompt token at 0 is masked); row 1: -0.5 + -4 = -4.5
    assert sequence_logprobs(logp, mask).tolist() == [-5.0, -4.5]


def test_dpo_loss_by_hand():
    # policy chosen -2, ref chosen -3: log-ratio +1; policy rejected -5, ref rejected -4: -1
    # h = 1 - (-1) = 2
    h = preference_logits(
        torch.tensor([-2.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-4.0])
    )
    assert h.item() == 2.0
    # beta 0.5: beta * h = 1; -log sigmoid(1) = log(1 + e^-1) = 0.31326169
    assert dpo_loss(h, 0.5).item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    assert dpo_loss(h, 0.5).item() == pytest.approx(0.31326169, abs=1e-6)
    # label smoothing 0.1: 0.9 * 0.31326169 + 0.1 * -log sigmoid(-1) = 0.9 * 0.31326169 + 0.1 *
    # 1.31326169 = 0.28193552 + 0.13132617 = 0.41326169
    assert dpo_loss(h, 0.5, 0.1).item() == pytest.approx(0.41326169, abs=1e-6)
    # h = 0 (policy == reference): log 2 whatever beta
    assert dpo_loss(torch.zeros(1), 3.0).item() == pytest.approx(math.log(2), abs=1e-7)


def test_ipo_loss_by_hand():
    h = torch.tensor([2.0, 0.0])
    # beta 0.5: target 1 / (2 * 0.5) = 1; (2 - 1)^2 = 1, (0 - 1)^2 = 1
    assert ipo_loss(h, 0.5).tolist() == [1.0, 1.0]
    # beta 0.25: target 2; (2 - 2)^2 = 0, (0 - 2)^2 = 4
    assert ipo_loss(h, 0.25).tolist() == [0.0, 4.0]


def test_dpo_gradient_raises_chosen_lowers_rejected():
    pol = torch.tensor([-2.0, -2.0], requires_grad=True)  # chosen, rejected
    h = preference_logits(pol[:1], pol[1:], torch.tensor([-2.0]), torch.tensor([-2.0]))
    dpo_loss(h, 0.2).sum().backward()
    # at h = 0: d/dh of -log sigmoid(beta h) = -beta * sigmoid(-beta h) = -0.2 * 0.5 = -0.1;
    # dh/d chosen = 1, dh/d rejected = -1
    assert pol.grad.tolist() == pytest.approx([-0.1, 0.1], abs=1e-7)


def test_algorithm_loss_and_logged_rewards():
    algo = DPO(loss_type="dpo", beta=0.5)
    # rows: chosen, rejected (one pair); two tokens each, the first masked out
    logp = torch.tensor([[-9.0, -2.0], [-9.0, -5.0]])
    ref = torch.tensor([[-1.0, -3.0], [-1.0, -4.0]])
    mask = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    loss, stats = algo.loss(logp, ref, mask)
    # h = (-2 + 3) - (-5 + 4) = 2 as above: loss = 0.31326169
    assert loss.item() == pytest.approx(0.31326169, abs=1e-6)
    # implicit rewards: 0.5 * (+1) = 0.5 and 0.5 * (-1) = -0.5; margin 1; accuracy 1
    assert stats["chosen_reward"].item() == pytest.approx(0.5)
    assert stats["rejected_reward"].item() == pytest.approx(-0.5)
    assert stats["reward_margin"].item() == pytest.approx(1.0)
    assert stats["preference_accuracy"].item() == 1.0
    ipo, _ = DPO(loss_type="ipo", beta=0.5).loss(logp, ref, mask)
    assert ipo.item() == pytest.approx(1.0)  # (2 - 1)^2
    with pytest.raises(ValueError, match="reference"):
        algo.loss(logp, None, mask)


def test_split_pairs_refuses_a_split_pair():
    v = torch.arange(4.0)
    c, r = split_pairs(v)
    assert c.tolist() == [0.0, 2.0] and r.tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="even"):
        split_pairs(v[:3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_type": "kto"}, "loss_type"),
        ({"beta": 0.0}, "beta"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "dpo only"),
        ({"pairs": "web"}, "algorithm.pairs"),
        ({"pairs": "file"}, "pairs_file"),
        ({"pairs": "policy", "group_size": 1}, "group_size"),
        ({"perturbations": ["swap"]}, "perturbations"),
        ({"epochs": 0}, "epochs"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPO(**kwargs)


def test_pairs_file_is_loaded_and_checked(tmp_path):
    good = {"task": {"id": "a", "prompt": "Compute 1+1", "answer": 2}, "chosen": ["x"]}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({**good, "rejected": ["y"]}) + "\n")
    assert len(DPO(pairs="file", pairs_file=str(path)).file_pairs) == 1
    path.write_text(json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:1: missing key 'rejected'"):
        DPO(pairs="file", pairs_file=str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DPO(pairs="file", pairs_file=str(tmp_path / "none.jsonl"))
