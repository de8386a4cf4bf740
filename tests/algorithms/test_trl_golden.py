"""Our GRPO loss variants against ``trl.GRPOTrainer._compute_loss`` on fixed random tensors.

The trainer is built bare (``object.__new__``, no ``__init__``, no model); only the attributes
``_compute_loss`` reads are set, and its per-token log-prob function is patched to return our
fixed log-probs. Checked: the loss and its gradient with respect to the log-probs, to 1e-6.

Mapping (TRL 1.x):
    grpo     loss_type="grpo",    importance_sampling_level="token"
    dr_grpo  loss_type="dr_grpo", importance_sampling_level="token", max_completion_length=L
    dapo     loss_type="dapo",    importance_sampling_level="token", num_items_in_batch=tokens
    gspo     loss_type="grpo",    importance_sampling_level="sequence"
and TRL's KL, exp(ref - logp) - (ref - logp) - 1, is our k3 in kl_mode=loss.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from agentrl.algorithms import functional as F
from agentrl.algorithms.grpo import GRPO
from tests.conftest import require_module

# the test extra (make setup): missing, it skips here and fails in CI
trl_grpo = require_module("trl.trainer.grpo_trainer", "pip install -e '.[test]'")

B, T, PROMPT = 6, 7, 3
# TRL's trainer reads it for dr_grpo; our GRPO takes the same constant as max_completion_length
MAX_COMPLETION_LENGTH = 10


def _accelerator():
    return SimpleNamespace(
        num_processes=1,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
    )


def trl_trainer(loss_type, beta, eps_low, eps_high, level="token", tis=False):
    """A GRPOTrainer with only the state ``_compute_loss`` uses (one process, no accumulation)."""
    t = object.__new__(trl_grpo.GRPOTrainer)
    t.loss_type = loss_type
    t.beta = beta
    t.epsilon_low = eps_low
    t.epsilon_high = eps_high
    t.importance_sampling_level = level
    t.max_completion_length = MAX_COMPLETION_LENGTH
    t.top_entropy_quantile = 1.0
    t.off_policy_mask_threshold = None
    t.use_vllm = tis
    t.vllm_importance_sampling_correction = tis
    t.aux_loss_enabled = False
    t._entropy_bonus_enabled = False
    t.current_gradient_accumulation_steps = 1
    t.model = SimpleNamespace(training=True)
    t.accelerator = _accelerator()
    t.args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    return t


def fixed_tensors(seed=0, noise=0.3, lengths=(7, 5, 1, 3, 6, 2)):
    """Log-probs [B, T] (leaf, float64), old/ref/behaviour log-probs, right-padded mask, [B] adv."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3.0
    logp = (old + noise * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0.0)
    ref = (old + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0.0)
    behaviour = (old + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0.0)
    mask = (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).double()
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return logp, old, ref, behaviour, mask, adv


def trl_loss(trainer, logp, old, ref, mask, adv, is_ratio=None):
    """TRL's loss and d loss / d logp on our tensors."""
    logp = logp.detach().clone().requires_grad_(True)

    def fake_logps(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert logits_to_keep == T
        return logp, torch.zeros_like(logp), None

    trainer._get_per_token_logps_and_entropies = fake_logps
    inputs = {
        "prompt_ids": torch.zeros(B, PROMPT, dtype=torch.long),
        "prompt_mask": torch.ones(B, PROMPT, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        # the generation batch's generated tokens: dapo's normalizer (one process, one step)
        "num_items_in_batch": mask.sum(),
    }
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    loss = trainer._compute_loss(None, inputs)
    loss.backward()
    return loss.detach(), logp.grad


def our_loss(algo, logp, old, ref, mask, adv, behaviour=None):
    logp = logp.detach().clone().requires_grad_(True)
    loss, _ = algo.loss(logp, old, ref, adv, mask, behaviour_logprobs=behaviour)
    loss.backward()
    return loss.detach(), logp.grad


CASES = {
    "grpo": (dict(loss_type="grpo"), dict(loss_type="grpo"), 0.2, 0.2),
    "dr_grpo": (
        dict(loss_type="dr_grpo", scale_rewards=False, max_completion_length=MAX_COMPLETION_LENGTH),
        dict(loss_type="dr_grpo"),
        0.2,
        0.2,
    ),
    "dapo": (dict(loss_type="dapo"), dict(loss_type="dapo"), 0.2, 0.28),
    # GSPO's sequence ratios sit near 1; 0.05/0.08 instead of the paper's 3e-4/4e-4 so that some
    # sequences are clipped and some are not with this noise
    "gspo": (dict(loss_type="gspo"), dict(loss_type="grpo", level="sequence"), 0.05, 0.08),
}


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradient_match_trl(name, beta):
    ours_kw, trl_kw, lo, hi = CASES[name]
    logp, old, ref, _, mask, adv = fixed_tensors()
    trainer = trl_trainer(trl_kw["loss_type"], beta, lo, hi, level=trl_kw.get("level", "token"))
    algo = GRPO(group_size=2, clip_low=lo, clip_high=hi, kl_coef=beta, kl_estimator="k3", **ours_kw)
    ref_arg = ref if beta > 0 else None
    expected, expected_grad = trl_loss(trainer, logp, old, ref, mask, adv)
    got, got_grad = our_loss(algo, logp, old, ref_arg, mask, adv)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(got_grad, expected_grad, atol=1e-6, rtol=0)
    # the fixture exercises both branches of the clip
    _, stats = algo.loss(logp, old, ref_arg, adv, mask)
    assert 0.0 < stats["clipfrac"].item() < 1.0


@pytest.mark.parametrize("name", ["grpo", "dapo"])
def test_truncated_importance_weights_match_trl(name):
    # TRL (use_vllm + vllm_importance_sampling_correction, mode token_truncate) builds
    #   importance_sampling_ratio = clamp(exp((old - sampling) * mask), max=cap)
    # in _generate_and_score_completions and multiplies the per-token policy loss by it before
    # adding beta * kl; we pass the behaviour log-probs and tis_cap instead.
    ours_kw, trl_kw, lo, hi = CASES[name]
    logp, old, ref, behaviour, mask, adv = fixed_tensors(seed=1)
    cap = 1.1
    is_ratio = torch.exp((old - behaviour) * mask).clamp(max=cap)
    assert (is_ratio * mask >= cap).any() and (is_ratio * mask < 1.0).any()
    trainer = trl_trainer(trl_kw["loss_type"], 0.04, lo, hi, tis=True)
    algo = GRPO(group_size=2, clip_low=lo, clip_high=hi, kl_coef=0.04, tis_cap=cap, **ours_kw)
    expected, expected_grad = trl_loss(trainer, logp, old, ref, mask, adv, is_ratio=is_ratio)
    got, got_grad = our_loss(algo, logp, old, ref, mask, adv, behaviour=behaviour)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(got_grad, expected_grad, atol=1e-6, rtol=0)


def test_known_difference_rows_without_tokens():
    # A real choice where we differ from TRL: in seq_mean_token_mean (loss_type grpo) TRL averages
    # over all B rows, a row with no generated token counting as 0; we average over the rows that
    # have tokens, so an empty episode does not shrink everyone's gradient. With one empty row of
    # B = 6: ours = TRL * 6 / 5.
    logp, old, ref, _, mask, adv = fixed_tensors(lengths=(7, 5, 0, 3, 6, 2))
    trainer = trl_trainer("grpo", 0.04, 0.2, 0.2)
    expected, _ = trl_loss(trainer, logp, old, ref, mask, adv)
    got, _ = our_loss(GRPO(group_size=2, kl_coef=0.04), logp, old, ref, mask, adv)
    assert got.item() == pytest.approx(expected.item() * B / (B - 1), abs=1e-6)
    # dr_grpo and dapo agree with TRL even then (their normalizers do not count rows with tokens)
    trainer = trl_trainer("dapo", 0.04, 0.2, 0.28)
    expected, _ = trl_loss(trainer, logp, old, ref, mask, adv)
    got, _ = our_loss(
        GRPO(group_size=2, kl_coef=0.04, loss_type="dapo", clip_high=0.28),
        logp,
        old,
        ref,
        mask,
        adv,
    )
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert F.aggregation_weight(mask, "seq_mean_token_mean").item() == B - 1
