"""bench/bench_overlap.py's arithmetic: loop time at each validation from a run's metrics.csv, and
the time each mode needs to reach 90% of the rise to the highest validation success both reach."""

from __future__ import annotations

import csv
import math

import pytest

from tests.conftest import load_bench


def write_run(path, step_s: dict[int, dict], val: dict[int, float]) -> None:
    """A metrics.csv as a run logs it: one row per RL step with its phase timers, one per
    validation (RL step 0 is before RL)."""
    keys = ["train/rl_step", "perf/rollout_s", "perf/score_s", "perf/update_s", "val/success_rate"]
    keys += ["pipeline/generate_s", "perf/val_s", "perf/val_wait_s"]
    path.mkdir()
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for step in sorted(set(step_s) | set(val)):
            if step in val:
                timed = {"perf/val_s": 3.0 + step, "perf/val_wait_s": 0.5 * step}
                w.writerow({"train/rl_step": step, "val/success_rate": val[step], **timed})
            if step in step_s:
                w.writerow({"train/rl_step": step, **step_s[step]})


def test_loop_time_at_each_validation_sums_the_phases_of_the_steps_before_it(tmp_path):
    bench = load_bench("bench_overlap")
    step = {"perf/rollout_s": 2.0, "perf/score_s": 0.5, "perf/update_s": 1.5}
    write_run(tmp_path / "r", {s: step for s in range(1, 5)}, {0: 0.5, 2: 0.7, 4: 0.9})
    c = bench.curve(tmp_path / "r")
    assert [(p["rl_step"], p["loop_s"], p["val_success"]) for p in c["points"]] == [
        (0, 0.0, 0.5),
        (2, 8.0, 0.7),
        (4, 16.0, 0.9),
    ]
    assert c["steps"] == 4 and c["loop_s"] == 16.0
    # each phase's mean over the steps, each validation's wall clock and its wait (0, 2, 4 above)
    assert c["mean_s"] == {
        "perf/rollout_s": 2.0,
        "perf/score_s": 0.5,
        "perf/update_s": 1.5,
        "perf/val_s": 5.0,
        "perf/val_wait_s": 1.0,
    }
    step = {**step, "pipeline/generate_s": 4.0}
    write_run(tmp_path / "o", {s: step for s in range(1, 3)}, {0: 0.5, 2: 0.7})
    assert bench.curve(tmp_path / "o")["mean_s"]["pipeline/generate_s"] == 4.0
    # the run's clock at each validation: the loop's plus every validation so far (3, 5, 7 s)
    assert [p["run_s"] for p in c["points"]] == [3.0, 8.0 + 8.0, 16.0 + 15.0]


def test_seeds_measured_in_separate_runs_are_merged_by_seed():
    bench = load_bench("bench_overlap")
    old = {"seeds": [{"seed": 0, "speedup": 1.4}, {"seed": 1, "speedup": 1.1}]}
    new = [{"seed": 2, "speedup": 1.2}, {"seed": 1, "speedup": 1.3}]
    merged = bench.merge(old, new)
    assert [(r["seed"], r["speedup"]) for r in merged] == [(0, 1.4), (1, 1.3), (2, 1.2)]
    assert bench.merge(None, new) == sorted(new, key=lambda r: r["seed"])


def test_a_seed_that_never_rose_is_left_out_of_the_mean_speedups():
    bench = load_bench("bench_overlap")
    seeds = [
        {"seed": 0, "speedup": 1.44, "loop_speedup": 1.85, "wall_speedup": 1.13},
        {
            "seed": 1,
            "speedup": math.nan,
            "loop_speedup": 1.73,
            "wall_speedup": 1.10,
            "run_speedup": math.nan,
        },
        {
            "seed": 2,
            "speedup": 1.28,
            "loop_speedup": 1.70,
            "wall_speedup": 1.11,
            "run_speedup": 0.91,
        },
    ]
    summary = bench.summarize("external", {}, seeds)
    assert summary["speedup_mean"] == pytest.approx((1.44 + 1.28) / 2)
    assert summary["speedup_min"] == pytest.approx(1.28)
    assert summary["run_speedup_mean"] == pytest.approx(0.91)
    assert summary["wall_speedup_mean"] == pytest.approx((1.13 + 1.10 + 1.11) / 3)
    assert math.isnan(bench.summarize("x", {}, seeds[1:2])["speedup_mean"])


def test_the_target_is_most_of_the_rise_both_reach_and_the_speedup_is_sync_over_overlap():
    bench = load_bench("bench_overlap")

    def run(loop_s, *pairs):
        points = [{"rl_step": i, "loop_s": t, "val_success": v} for i, (t, v) in enumerate(pairs)]
        return {"points": points, "loop_s": loop_s}

    sync = run(30.0, (0.0, 0.5), (10.0, 0.8), (20.0, 0.95))
    overlap = run(20.0, (0.0, 0.5), (6.0, 0.9), (12.0, 0.92))
    cmp = bench.compare({"sync": sync, "overlap": overlap}, fraction=0.9)
    # 90% of the way from 0.5 to 0.92 (overlap's best, the highest both reach): 0.878; sync gets
    # there at 20 s, overlap at 6 s
    assert cmp["target"] == pytest.approx(0.878)
    assert cmp["time_to_target"] == {"sync": 20.0, "overlap": 6.0}
    assert cmp["speedup"] == pytest.approx(20.0 / 6.0)
    assert cmp["loop_speedup"] == pytest.approx(1.5)
    # on a plateau a lucky validation does not set the target: sync touches 0.98 once at step 2,
    # overlap at step 4; both are at 0.96 from step 2
    sync = run(8.0, (0.0, 0.56), (2.0, 0.6), (4.0, 0.98), (6.0, 0.96), (8.0, 0.96))
    overlap = run(8.0, (0.0, 0.56), (2.0, 0.6), (4.0, 0.96), (6.0, 0.96), (8.0, 0.98))
    cmp = bench.compare({"sync": sync, "overlap": overlap}, fraction=0.9)
    assert cmp["time_to_target"] == {"sync": 4.0, "overlap": 4.0}
    assert cmp["speedup"] == pytest.approx(1.0)
    assert "run_speedup" not in cmp  # runs that did not time their validations
    # on the run's clock (validations included) overlap's waits before validations count
    sync = run(30.0, (0.0, 0.5), (10.0, 0.8), (20.0, 0.95))
    overlap = run(20.0, (0.0, 0.5), (6.0, 0.9), (12.0, 0.92))
    for r, val_s in ((sync, [5.0, 5.0, 5.0]), (overlap, [5.0, 9.0, 9.0])):
        clock = 0.0
        for q, v in zip(r["points"], val_s):
            clock += v
            q["run_s"] = q["loop_s"] + clock
        r["wall_s"] = r["points"][-1]["run_s"] + 60.0
    cmp = bench.compare({"sync": sync, "overlap": overlap}, fraction=0.9)
    assert cmp["run_time_to_target"] == {"sync": 35.0, "overlap": 20.0}
    assert cmp["run_speedup"] == pytest.approx(35.0 / 20.0)
    assert cmp["wall_speedup"] == pytest.approx((35.0 + 60.0) / (35.0 + 60.0))
    # neither learns: both are "there" before RL, no speed-up to speak of
    flat = run(10.0, (0.0, 0.5), (10.0, 0.4))
    assert math.isnan(bench.compare({"sync": flat, "overlap": flat})["speedup"])


def test_warm_from_and_warm_seed_pick_the_warm_start_the_runs_share(tmp_path):
    """--warm-seed N: every seed's runs look up seed N's warm start (their own seeds otherwise);
    --warm-from ENV=SOURCE is checked against the bench's envs."""
    import argparse

    from agentrl.utils.instantiate import instantiate
    from agentrl.warmstart import warmstart_identity

    bench = load_bench("bench_overlap")
    assert bench.warm_sources("webnav_browser=webnav") == {"webnav_browser": "webnav"}
    assert bench.warm_sources("") == {}
    with pytest.raises(SystemExit, match=r"^--warm-from: 'webnav_browser=web' is not ENV=ENV"):
        bench.warm_sources("webnav_browser=web")

    def folders(warm_seed):
        args = argparse.Namespace(steps=2, val_tasks=4, val_every=1, warm_seed=warm_seed)
        cfgs = [bench.config(args, "webnav", s, "sync", tmp_path, tmp_path) for s in (1, 2)]
        assert [c.seed for c in cfgs] == [1, 2]
        return {instantiate(c.warmstart).folder(warmstart_identity(c)) for c in cfgs}

    assert len(folders(None)) == 2
    assert len(folders(0)) == 1
