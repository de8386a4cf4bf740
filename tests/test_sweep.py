"""python -m agentrl.sweep: a multirun folder -> per-configuration means and t intervals."""

from __future__ import annotations

import csv
import math

import pytest

from agentrl.sweep import main, mean_interval, t_quantile


def fake_run(path, overrides, curve):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if curve is None:
        return
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["train/rl_step", "val/success_rate", "rollout/reward_mean"])
        for step, val in curve:
            w.writerow([step, val, ""])
            w.writerow([step, "", 0.5])  # a training row: no validation value


def test_t_quantiles_match_the_tables():
    # Student t, two-sided 95%: df=2 -> 4.303, df=4 -> 2.776, df=30 -> 2.042
    assert t_quantile(0.95, 2) == pytest.approx(4.303, abs=2e-3)
    assert t_quantile(0.95, 4) == pytest.approx(2.776, abs=2e-3)
    assert t_quantile(0.95, 30) == pytest.approx(2.042, abs=2e-3)
    assert t_quantile(0.90, 2) == pytest.approx(2.920, abs=2e-3)


def test_mean_interval_by_hand():
    # values 0.5, 0.6, 0.7: mean 0.6, s = 0.1, half = 4.303 * 0.1 / sqrt(3) = 0.2484
    mean, lo, hi = mean_interval([0.5, 0.6, 0.7], 0.95)
    assert mean == pytest.approx(0.6)
    assert (lo, hi) == pytest.approx((0.6 - 0.2484, 0.6 + 0.2484), abs=1e-3)
    assert all(math.isnan(x) for x in mean_interval([0.4], 0.95)[1:])


def test_sweep_table_and_plot(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    curves = {
        # algorithm=grpo: final 0.5/0.6/0.7 (mean 0.6), best 0.8/0.6/0.7 (mean 0.7)
        ("algorithm=grpo", "0"): [(0, 0.2), (5, 0.8), (10, 0.5)],
        ("algorithm=grpo", "1"): [(0, 0.2), (5, 0.4), (10, 0.6)],
        ("algorithm=grpo", "2"): [(0, 0.2), (5, 0.3), (10, 0.7)],
        ("algorithm=rloo", "0"): [(0, 0.2), (10, 0.3)],
        ("algorithm=rloo", "1"): None,  # crashed before its first validation
    }
    for i, ((alg, seed), curve) in enumerate(curves.items()):
        fake_run(sweep / str(i), [alg, f"seed={seed}", "hydra.launcher.partition=x"], curve)
    assert main([str(sweep)]) == 0
    with open(sweep / "sweep.csv", newline="") as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    grpo, rloo = rows["algorithm=grpo"], rows["algorithm=rloo"]
    assert int(grpo["seeds"]) == 3 and int(grpo["incomplete"]) == 0
    assert float(grpo["final_mean"]) == pytest.approx(0.6)
    assert float(grpo["final_high"]) - 0.6 == pytest.approx(0.2484, abs=1e-3)
    assert float(grpo["best_mean"]) == pytest.approx(0.7)
    assert int(rloo["seeds"]) == 1 and int(rloo["incomplete"]) == 1
    assert float(rloo["final_mean"]) == pytest.approx(0.3)
    table = (sweep / "sweep.md").read_text()
    assert "| algorithm=grpo | 3 | 60.0 [35.2, 84.8] | 70.0 [" in table
    assert (sweep / "sweep.png").stat().st_size > 1000
    assert "5 runs, 2 configurations" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert main([str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err
