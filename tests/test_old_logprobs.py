"""The update's forward as the source of the old log-probs (one epoch of one minibatch): the
score phase skips that forward, and the run is the one it would be with the forward."""

from __future__ import annotations

import csv

import pytest
import torch

from agentrl import rl_step as R
from agentrl import updater as U
from agentrl.batching import TokenBatch
from agentrl.step_data import ScoredBatch
from agentrl.train import run
from tests.conftest import SHORT_WARMSTART_LR


def rows(run_dir) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]


def series(rs, key):
    return [r[key] for r in rs if key in r]


SMALL = (
    "debug=smoke",
    "data.tasks_per_step=4",
    "algorithm.group_size=4",
    "algorithm.minibatches=1",
    "algorithm.epochs=1",
    "module.update_micro_batch_size=5",
    # shaping, so that a barely trained policy's groups have different rewards (an update)
    "reward.invalid_penalty=0.2",
    "reward.format_bonus=0.1",
    # a short warm start: the policy writes some valid actions, so rewards differ in a group
    "warmstart.steps=60",
    SHORT_WARMSTART_LR,
    "warmstart.num_demos=256",
    "warmstart.batch_size=32",
)


def score_forwards(monkeypatch) -> list[int]:
    """Counts the policy forwards of the score phase (model_logprobs_chunked on the policy)."""
    calls = []
    real = U.model_logprobs_chunked

    def counted(model, batch, chunk, temperature=1.0):
        calls.append(int(batch.input_ids.shape[0]))
        return real(model, batch, chunk, temperature)

    monkeypatch.setattr(U, "model_logprobs_chunked", counted)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_old_logprobs_from_the_update_match_a_separate_forward(
    make_cfg, tmp_path, monkeypatch, kl_coef
):
    overrides = (*SMALL, f"algorithm.kl_coef={kl_coef}")
    calls = score_forwards(monkeypatch)
    run(make_cfg(*overrides, run="fused"))
    fused_calls = list(calls)
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(R, "old_from_update", lambda algorithm, critic: False)
        run(make_cfg(*overrides, run="separate"))
    # the separate run computes old log-probs of all 16 episodes in the score phase each step
    assert calls.count(16) >= 2
    # the fused one never does (the reference of kl_coef > 0 is a frozen copy, counted too)
    assert fused_calls.count(16) == (calls.count(16) // 2 if kl_coef else 0)
    fused, separate = rows(tmp_path / "fused"), rows(tmp_path / "separate")
    for key in ("rollout/reward_mean", "val/success_rate"):
        assert series(fused, key) == series(separate, key), key
    for key in ("loss/policy", "rollout/logprob_diff", "loss/grad_norm"):
        got, want = series(fused, key), series(separate, key)
        assert len(got) == len(want) >= 2, key
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), key
    if kl_coef:
        got, want = series(fused, "loss/kl_ref_seq"), series(separate, "loss/kl_ref_seq")
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    # the clip fraction is zero: the ratio is exactly one before the only optimizer step
    assert all(v == 0.0 for v in series(fused, "loss/clipfrac"))


@pytest.mark.slow
def test_several_minibatches_keep_the_separate_forward(make_cfg, monkeypatch):
    calls = score_forwards(monkeypatch)
    cfg = make_cfg(*SMALL, "algorithm.minibatches=2", "algorithm.kl_coef=0.0")
    run(cfg)
    assert calls.count(16) == 2


def test_fill_old_covers_rows_the_update_did_not_reach():
    seen = []

    class Updater:
        def logprobs(self, model, batch):
            seen.append(batch.input_ids.shape[0])
            return torch.full((batch.input_ids.shape[0], 3), -1.0)

    class Stub:
        updater = Updater()
        policy = None

    scored = ScoredBatch(
        TokenBatch(
            torch.ones(3, 4, dtype=torch.long),
            torch.ones(3, 4, dtype=torch.long),
            torch.ones(3, 3),
            torch.zeros(3, 3),
        ),
        old=torch.full((3, 3), 7.0),
        old_pending=torch.tensor([True, False, True]),
    )
    R.fill_old(Stub(), scored)
    assert seen == [1]
    assert scored.old[1].tolist() == [-1.0] * 3
    assert scored.old[0].tolist() == [7.0] * 3
    # filled rows are not computed again
    R.fill_old(Stub(), scored)
    assert seen == [1] and scored.old_pending.all()
