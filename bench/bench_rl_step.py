"""Seconds per RL step of one recipe under different settings (rollout engine, precision...),
side by side in one run: the phases of each step, generated tokens per second, the engine/trainer
log-prob gap and the success of the sampled episodes.

    python bench/bench_rl_step.py --experiment smollm2_tooluse --seed 1 --steps 3 \\
        --arms hf,vllm,vllm_bf16 [--arm NAME=override,override ...] [--rounds 1] \\
        [--cache .cache] [--out FILE.json]

``--arms`` picks named settings (``ARMS`` below); each ``--arm`` defines one more, run after them
(``--arm mb32=module.update_micro_batch_size=32``).

``rollout=vllm`` arms need vLLM (`make setup-vllm`, then run this with ``.venv-vllm/bin/python``;
the hf arms run there too, so every arm has the same torch and transformers).

Each arm is ``launch.py experiment=<E> seed=<S> data.steps=<N>`` plus its overrides, in a process
of its own (vLLM's engine lives in the trainer's process: a fresh one per arm keeps its threads,
memory and environment from the next), with no validation before RL and one small validation at
the end, no exports or step checkpoints, and the warm start from ``--cache`` (trained there before
the first arm starts its clock when it is missing). With ``--rounds R`` the arms run R times in
turn (A B A B...), so a machine whose load drifts shows in the spread. Per arm: the median over its
steps of each phase (``perf/<phase>_s``) and of the whole step, the median rollout tokens/s, the
mean of ``rollout/logprob_diff`` and ``rollout/reward_mean``, and the process's wall time (start-up
and the last validation included). The table's last column is the step's speed-up over the first
arm (its median step over this arm's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentrl.plotting import read_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
PHASES = ("rollout", "score", "advantages", "update", "sync", "log")
# named settings; ``--arm NAME=override,override`` adds others
ARMS = {
    "hf": ["rollout=hf"],
    "hf_no_prefix_cache": ["rollout=hf", "rollout.engine.reuse_prefixes=false"],
    "hf_fp32": ["rollout=hf", "trainer.precision=32"],
    # vLLM in the policy's dtype (float32 weights under bf16 autocast: float32)
    "vllm": ["rollout=vllm"],
    "vllm_bf16": ["rollout=vllm", "rollout.engine.dtype=bfloat16"],
    "vllm_merged": ["rollout=vllm", "rollout.engine.lora_sync=merged"],
}
# what every arm shares: nothing but the RL steps and one small validation at the end
COMMON = [
    "validate_before_training=false",
    "data.num_val_tasks=8",
    "data.val_batch_size=8",
    "callbacks.export=null",
    "callbacks.curve=null",
    "callbacks.samples=null",
    "callbacks.step_checkpoints=null",
    "callbacks.rich_progress=null",
    "trainer.enable_progress_bar=false",
]


def overrides(args, arm: list[str], run_dir: Path) -> list[str]:
    out = [f"experiment={args.experiment}"] if args.experiment else []
    out += [f"seed={args.seed}", f"data.steps={args.steps}"]
    out += [f"trainer.val_check_interval={args.steps}", *COMMON, *args.extra, *arm]
    return out + [f"paths.cache_dir={args.cache}", f"hydra.run.dir={run_dir}"]


def warm(args, run_dir: Path) -> None:
    """The warm start into the cache before any clock starts (a no-op when it is there)."""
    from bench_overlap import warm as train_warm_start
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides(args, [], run_dir)[:-1])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(run_dir)
    train_warm_start(cfg)


def step_rows(run_dir: Path) -> list[dict]:
    rows = read_metrics(run_dir / "metrics.csv")
    return [r for r in rows if "perf/rollout_s" in r]


def summarize(rows: list[dict], wall_s: float) -> dict:
    """Medians over the steps of one or more runs of an arm."""

    def median(key):
        values = [r[key] for r in rows if key in r]
        return statistics.median(values) if values else None

    def mean(key):
        values = [r[key] for r in rows if key in r]
        return statistics.fmean(values) if values else None

    steps = [sum(r.get(f"perf/{p}_s", 0.0) for p in PHASES) for r in rows]
    out = {
        "steps": len(rows),
        "step_s": statistics.median(steps) if steps else None,
        "step_s_all": steps,
        "wall_s": wall_s,
    }
    for p in PHASES:
        out[f"{p}_s"] = median(f"perf/{p}_s")
    out["rollout_tokens_per_s"] = median("perf/rollout_tokens_per_s")
    out["logprob_diff"] = mean("rollout/logprob_diff")
    out["success_rate"] = mean("rollout/success_rate")
    out["reward_mean"] = mean("rollout/reward_mean")
    out["generated_tokens_mean"] = mean("rollout/generated_tokens_mean")
    out["prefix_reused_frac"] = mean("rollout/prefix_reused_frac")
    return out


def _fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def table(results: dict) -> str:
    names = list(results)
    base = results[names[0]]["step_s"] if names else None
    lines = [
        "| arm | s per RL step (median) | rollout s | update s | sync s | rollout tok/s "
        "| logprob diff | sampled reward | wall s | step speed-up vs first |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if r.get("failed"):
            lines.append(f"| {name} | failed: {r['failed']} |" + " |" * 8)
            continue
        ratio = base / r["step_s"] if base and r["step_s"] else None
        lines.append(
            f"| {name} | {_fmt(r['step_s'])} | {_fmt(r['rollout_s'])} | {_fmt(r['update_s'])} "
            f"| {_fmt(r['sync_s'], '.2f')} | {_fmt(r['rollout_tokens_per_s'])} "
            f"| {_fmt(r['logprob_diff'], '.4f')} | {_fmt(r['reward_mean'], '.2f')} "
            f"| {_fmt(r['wall_s'], '.0f')} | {_fmt(ratio, '.2f')}x |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default=None, help="conf/experiment/<name> (none: the default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--arms", default="hf,vllm")
    p.add_argument(
        "--arm", action="append", default=[], help="NAME=override,override (run after --arms)"
    )
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--cache", default=str(ROOT / ".cache"))
    p.add_argument("--extra", nargs="*", default=[], help="overrides for every arm")
    p.add_argument("--out", default=None, help="write the results here (.json)")
    args = p.parse_args()
    from bench_engine import cpu_name

    arms = {**ARMS}
    for spec in args.arm:
        name, _, ovr = spec.partition("=")
        arms[name] = [o for o in ovr.split(",") if o]
    # the arms named by --arms, then each --arm not among them
    chosen = [a for a in args.arms.split(",") if a]
    chosen += [a for a in (s.partition("=")[0] for s in args.arm) if a not in chosen]
    unknown = [a for a in chosen if a not in arms]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; known: {sorted(arms)}")
    rows: dict[str, list[dict]] = {a: [] for a in chosen}
    walls: dict[str, list[float]] = {a: [] for a in chosen}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rl-step-") as tmp:
        warm(args, Path(tmp) / "warm")
        for rnd in range(args.rounds):
            for name in chosen:
                run_dir = Path(tmp) / f"{name}-{rnd}"
                cmd = [sys.executable, "launch.py", *overrides(args, arms[name], run_dir)]
                start = time.monotonic()
                out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                walls[name].append(time.monotonic() - start)
                if out.returncode != 0:
                    # the other arms still run; this one is reported with the error's last line
                    print(out.stdout[-3000:], out.stderr[-5000:], sep="\n", file=sys.stderr)
                    lines = [x for x in out.stderr.splitlines() if x.strip()] or ["(no stderr)"]
                    failed[name] = f"exit {out.returncode}: {lines[-1][:300]}"
                    print(f"round {rnd} {name}: failed ({failed[name]})", flush=True)
                    continue
                rows[name] += step_rows(run_dir)
                print(f"round {rnd} {name}: {walls[name][-1]:.0f} s", flush=True)
    results = {a: summarize(rows[a], statistics.median(walls[a])) for a in chosen}
    for name, why in failed.items():
        results[name]["failed"] = why
    print(table(results))
    if args.out:
        doc = {
            "args": vars(args),
            "arms": {a: arms[a] for a in chosen},
            "machine": f"{cpu_name()}, {os.cpu_count()} cpus",
            "load_avg_at_end": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d"),
            "results": results,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return 1 if len(failed) == len(chosen) else 0


if __name__ == "__main__":
    sys.exit(main())
