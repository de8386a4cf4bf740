"""`launch.py reward=learned` end to end on a small budget: no checkpoint configured, so the run
trains a reward model first, caches it, logs the learned reward and the hacking monitor; the
next run reuses the cached model. `mode=reward_model` trains one alone."""

from __future__ import annotations

import csv
import logging

import pytest

from agentrl.rewards.training import reward_model_stage
from agentrl.train import build_components, main

SMALL = [
    "debug=smoke",
    "reward=learned",
    "reward.training.sources.env.num_tasks=40",
    "reward.training.val_tasks=10",
    "reward.training.steps=6",
    "reward.training.batch_size=8",
    "reward.training.val_every=6",
]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_learned_reward_run_trains_caches_and_reuses(make_cfg, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    # its own cache: what it holds, and that the next run reuses it, is what is tested
    main(make_cfg(*SMALL, own_cache=True))
    assert "no checkpoint configured; training one" in caplog.text
    cached = list((tmp_path / "cache" / "reward_models").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.pt").is_file()
    run = tmp_path / "run"
    assert rows(run / "reward_model" / "metrics.csv")  # the reward model's own training log
    train_rows = [r for r in rows(run / "metrics.csv") if r.get("reward/learned")]
    assert train_rows and all(r.get("reward/rm_success_auc") is not None for r in train_rows)
    caplog.clear()
    cfg = make_cfg(*SMALL, run="again", own_cache=True)
    parts = build_components(cfg)
    reward_model_stage(cfg, parts["reward"], parts["suite"])  # what the next run does first
    assert "reusing the cached" in caplog.text and "training one" not in caplog.text

    main(make_cfg(*SMALL, "mode=reward_model", run="rm", own_cache=True))
    info = (tmp_path / "rm" / "reward_model" / "info.json").read_text()
    assert '"val_accuracy"' in info
