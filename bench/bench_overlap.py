"""``rollout.pipeline=sync`` vs ``overlap``: the time each needs to reach the same validation
success, side by side in one process, per env and seed.

    python bench/bench_overlap.py [--envs toolcalc,external,webnav_browser] [--seeds 0,1,2]
        [--steps 30] [--val-every 5] [--val-tasks 100] [--out bench/results/overlap] [--cache DIR]
        [--warm-from ENV=SOURCE,...] [--warm-seed N]

For each env and seed the two runs share every setting but ``rollout.pipeline`` and one cached
warm start (the env's own recipe settings), trained before either run starts its clock.
Validation runs before RL and every ``--val-every`` steps.

Three clocks. The RL loop's: the sum over steps of the step's phase timers (``perf/<phase>_s``:
rollout, which in overlap is the wait for the batch made in the background, score, advantages,
update, sync, log), without validation, warm start and start-up. It flatters overlap: before a
validation overlap waits for the rollout in flight, and that wait is timed as validation. The
run's clock (``run_s``): the loop's plus every validation so far (``perf/val_s``, the wait
included), i.e. the wall time of the run after start-up: the honest one. The whole run's wall
time (``wall_s``: the same start-up and validations in both modes, the warm start cached).

The target of a seed is 90% of the way (``--fraction``) from the success before RL to the highest
validation success both modes reach, ``min(best sync, best overlap)``. Each mode's time to it is
its clock at the end of the first validation at or above it; the speed-up is sync's time over
overlap's, on the loop clock (``speedup``) and on the run's (``run_speedup``). Also printed: the
whole loop's and the whole run's speed-ups (the same number of steps) and each mode's validation
curve, so a faster run that learns less shows. Writes ``<out>/<env>.json`` (every run's curve,
times and mean phase times; the seeds of an earlier run that this one does not redo are kept)
and prints a Markdown table.

envs: ``toolcalc`` (the default recipe), ``external`` (``experiment=openai_agent``: an agent
program per rollout against the gateway), ``webnav_browser`` (``env=webnav
env.backend=browser``: each episode in headless Chromium; needs Debian's chromium).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from agentrl.plotting import read_metrics

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("rollout", "score", "advantages", "update", "sync", "log")
ENVS = {
    "toolcalc": [],
    "external": ["experiment=openai_agent", "env.timeout_s=300"],
    "webnav": ["env=webnav"],
    "webnav_browser": ["env=webnav", "env.backend=browser"],
}


def warm_sources(spec: str) -> dict[str, str]:
    """``--warm-from``: "env=source,..." -> {env: source}: env's runs start from source's warm
    start (e.g. webnav_browser=webnav: the text backend's, whose pages lack the JavaScript deal
    link; both modes start from it, so the comparison stays fair)."""
    pairs = [p.split("=", 1) for p in spec.split(",") if p.strip()]
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in ENVS or pair[1] not in ENVS:
            raise SystemExit(f"--warm-from: {'='.join(pair)!r} is not ENV=ENV of {sorted(ENVS)}")
    return {env.strip(): source.strip() for env, source in pairs}


def config(args, env: str, seed: int, pipeline: str, out: Path, cache: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *ENVS[env],
                f"rollout.pipeline={pipeline}",
                f"seed={seed}",
                f"data.steps={args.steps}",
                f"data.num_val_tasks={args.val_tasks}",
                f"data.val_batch_size={args.val_tasks}",
                f"trainer.val_check_interval={args.val_every}",
                "validate_before_training=true",
                "callbacks.export=null",
                # every seed's runs from the warm start of one seed (its RL differs by seed)
                *([] if args.warm_seed is None else [f"warmstart.seed={args.warm_seed}"]),
            ],
        )
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(cache)
        cfg.trainer.enable_progress_bar = False
        cfg.callbacks.rich_progress = None
    return cfg


def warm(cfg) -> None:
    """Train the run's warm start into the cache (or find it there) before either clock starts:
    both modes then load the same one, and neither wall time counts its training."""
    import lightning as L

    from agentrl.envs.base import close_suite
    from agentrl.train import build_components
    from agentrl.warmstart import warm_start

    L.seed_everything(cfg.seed, workers=True)
    parts = build_components(cfg)
    try:
        policy, tokenizer = parts["model_spec"].load()
        warm_start(cfg, parts, policy, tokenizer)
    finally:
        close_suite(parts["suite"])


def share_warm_start(src, dst) -> None:
    """Put the warm start cached for config ``src`` where config ``dst`` looks for its own."""
    import shutil

    from agentrl.utils.instantiate import instantiate
    from agentrl.warmstart import warmstart_identity

    stage = instantiate(src.warmstart)
    have = stage.folder(warmstart_identity(src))
    want = stage.folder(warmstart_identity(dst))
    if not (want / "model.pt").exists():
        shutil.copytree(have, want, dirs_exist_ok=True)


def curve(run_dir: Path) -> dict:
    """Loop time (s) at each validation, and the validation success there."""
    rows = read_metrics(run_dir / "metrics.csv")
    steps, phases = {}, {}
    for r in rows:
        if "perf/rollout_s" in r:
            steps[int(r["train/rl_step"])] = sum(r.get(f"perf/{p}_s", 0.0) for p in PHASES)
            for key in (*(f"perf/{p}_s" for p in PHASES), "pipeline/generate_s"):
                if key in r:
                    phases.setdefault(key, []).append(r[key])
    # where the time goes: each phase's mean over the steps (in overlap, perf/rollout_s is the
    # wait for the batch and pipeline/generate_s the rollout thread's time to make it), and each
    # validation's wall clock (perf/val_wait_s: the part spent waiting for the rollout in flight)
    for key in ("perf/val_s", "perf/val_wait_s"):
        phases[key] = [r[key] for r in rows if key in r and "val/success_rate" in r]
    means = {k: statistics.fmean(v) for k, v in phases.items() if v}
    vals = [r for r in rows if "val/success_rate" in r]
    points, validated = [], 0.0
    for r in vals:
        step, success = int(r["train/rl_step"]), r["val/success_rate"]
        loop = sum(t for s, t in steps.items() if s <= step)
        point = {"rl_step": step, "loop_s": loop, "val_success": success}
        if "perf/val_s" in r:
            # the run's clock at the end of this validation: the loop and every validation so far
            # (in overlap, its wait for the rollout in flight too)
            validated += r["perf/val_s"]
            point["run_s"] = loop + validated
        points.append(point)
    return {"points": points, "loop_s": sum(steps.values()), "steps": len(steps), "mean_s": means}


def time_to(points: list[dict], target: float, clock: str = "loop_s") -> float | None:
    for p in points:
        if p["val_success"] >= target - 1e-9:
            return p.get(clock)
    return None


def compare(runs: dict, fraction: float = 0.9) -> dict:
    """The target: ``fraction`` of the way from the success before RL to the highest validation
    success both modes reach (the peak itself, on a plateau, is one lucky validation: 0.96-0.98
    noise on 200 tasks). Each mode's loop time to it, the speed-up (sync's time over overlap's;
    nan when overlap is there before any RL step) and the whole loop's speed-up. Where the runs
    timed their validations (``run_s``): the same on the run's clock, validations included
    (``run_time_to_target``, ``run_speedup``); where they have wall times, their ratio."""
    start = min(r["points"][0]["val_success"] for r in runs.values())
    best = min(max(q["val_success"] for q in r["points"]) for r in runs.values())
    target = start + fraction * (best - start)

    def ratio(a, b):
        return a / b if a is not None and b else float("nan")

    t = {k: time_to(r["points"], target) for k, r in runs.items()}
    out = {
        "target": target,
        "time_to_target": t,
        "speedup": ratio(t["sync"], t["overlap"]),
        "loop_speedup": ratio(runs["sync"]["loop_s"], runs["overlap"].get("loop_s")),
    }
    run_t = {k: time_to(r["points"], target, "run_s") for k, r in runs.items()}
    if None not in run_t.values():
        out["run_time_to_target"] = run_t
        out["run_speedup"] = ratio(run_t["sync"], run_t["overlap"])
    if all("wall_s" in r for r in runs.values()):
        out["wall_speedup"] = ratio(runs["sync"]["wall_s"], runs["overlap"]["wall_s"])
    return out


def merge(old: dict | None, results: list[dict]) -> list[dict]:
    """The seeds of an earlier run of the same env (``old``, its json) that this run did not
    redo, then this run's, by seed: seeds can be measured in separate invocations."""
    done = {r["seed"] for r in results}
    kept = [r for r in (old or {}).get("seeds", []) if r["seed"] not in done]
    return sorted(kept + results, key=lambda r: r["seed"])


def _finite(values) -> list[float]:
    """The values that are numbers: a seed whose validation never rose has no time to target
    (nan), and says nothing about the speed-up."""
    return [v for v in values if v is not None and math.isfinite(v)]


def summarize(env: str, args: dict, results: list[dict]) -> dict:
    speedups = _finite(r["speedup"] for r in results)
    return {
        "env": env,
        "args": args,
        "speedup_mean": statistics.fmean(speedups) if speedups else math.nan,
        "speedup_min": min(speedups) if speedups else math.nan,
        "loop_speedup_mean": statistics.fmean(r["loop_speedup"] for r in results),
        # over the seeds that have them (runs before validations were timed have no run clock)
        **{
            f"{k}_mean": statistics.fmean(vals) if vals else math.nan
            for k in ("run_speedup", "wall_speedup")
            if any(k in r for r in results)
            for vals in [_finite(r.get(k) for r in results)]
        },
        "seeds": results,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default="toolcalc,external,webnav_browser")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--val-every", type=int, default=5)
    p.add_argument("--val-tasks", type=int, default=100)
    p.add_argument("--fraction", type=float, default=0.9)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "overlap"))
    # warm starts are cached here by their settings (default: a fresh temporary folder, so the
    # first run of each env and seed trains one)
    p.add_argument("--cache", default=None)
    # ENV=SOURCE,...: ENV's runs start from SOURCE's warm start (see warm_sources)
    p.add_argument("--warm-from", default="")
    # every seed's runs start from the warm start of this seed (an env whose warm start takes
    # long: webnav in Chromium renders its demonstrations in ~17 min, then trains ~18 min)
    p.add_argument("--warm-seed", type=int, default=None)
    args = p.parse_args()
    warm_from = warm_sources(args.warm_from)
    from agentrl.train import run

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        "| env | seed | target val success | sync s to it | overlap s to it | speed-up "
        "| with validations: sync / overlap s to it (speed-up) | loop s sync / overlap (speed-up) "
        "| whole run s sync / overlap (speed-up) | sync curve | overlap curve |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        for env in args.envs.split(","):
            results = []
            path = out / f"{env}.json"
            old = json.loads(path.read_text()) if path.is_file() else None
            for seed in (int(s) for s in args.seeds.split(",")):
                cache = Path(args.cache) if args.cache else Path(tmp) / f"cache-{env}-{seed}"
                runs = {}
                source = warm_from.get(env, env)
                warm_cfg = config(
                    args, source, seed, "sync", Path(tmp) / f"{env}-{seed}-warm", cache
                )
                warm(warm_cfg)
                if source != env:
                    share_warm_start(warm_cfg, config(args, env, seed, "sync", Path(tmp), cache))
                for pipeline in ("sync", "overlap"):
                    run_dir = Path(tmp) / f"{env}-{seed}-{pipeline}"
                    start = time.monotonic()
                    run(config(args, env, seed, pipeline, run_dir, cache))
                    runs[pipeline] = {**curve(run_dir), "wall_s": time.monotonic() - start}
                cmp = compare(runs, args.fraction)
                target, t, speedup = cmp["target"], cmp["time_to_target"], cmp["speedup"]
                results.append({"seed": seed, **cmp, "runs": runs})
                # after each seed: a long run stopped midway keeps the seeds it finished
                summary = summarize(env, vars(args), merge(old, results))
                path.write_text(json.dumps(summary, indent=1))
                shown = {
                    k: " ".join(f"{q['val_success']:.2f}" for q in r["points"])
                    for k, r in runs.items()
                }
                loops = f"{runs['sync']['loop_s']:.1f} / {runs['overlap']['loop_s']:.1f}"
                run_t = cmp.get("run_time_to_target") or {"sync": math.nan, "overlap": math.nan}
                walls = f"{runs['sync']['wall_s']:.0f} / {runs['overlap']['wall_s']:.0f}"
                print(
                    f"| {env} | {seed} | {target:.2f} | {t['sync']:.1f} | {t['overlap']:.1f} | "
                    f"{speedup:.2f}x | {run_t['sync']:.1f} / {run_t['overlap']:.1f} "
                    f"({cmp.get('run_speedup', math.nan):.2f}x) | {loops} "
                    f"({cmp['loop_speedup']:.2f}x) | {walls} ({cmp['wall_speedup']:.2f}x) "
                    f"| {shown['sync']} | {shown['overlap']} |",
                    flush=True,
                )
            print(
                f"| {env} | mean | | | | {summary['speedup_mean']:.2f}x (min "
                f"{summary['speedup_min']:.2f}x) | ({summary.get('run_speedup_mean', math.nan):.2f}x) "
                f"| ({summary['loop_speedup_mean']:.2f}x) "
                f"| ({summary.get('wall_speedup_mean', math.nan):.2f}x) | | |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
