"""Does the example agent learn through the gateway? Before/after held-out success of
``experiment=openai_agent`` (examples/openai_agent, the official openai client, subprocess per
rollout) next to the same recipe with the in-process env (``env=toolcalc``), same seed, same
warm start (cached), same budget.

    python bench/bench_gateway.py [--steps 10] [--val 100] [--out outputs/bench_gateway]

Prints a Markdown table; paste it into docs/gateway.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    # concurrent programs' completions batched 8 at a time: the trainer's share of a busy CPU
    # would otherwise be the bottleneck (sampling then depends on arrival order)
    "gateway + openai agent (env=external)": [
        "experiment=openai_agent",
        "env.gateway.max_batch_size=8",
    ],
    "in-process (env=toolcalc)": ["experiment=toolcalc_grpo"],
}


def val_curve(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/success_rate")]
    return {int(float(r["train/rl_step"])): float(r["val/success_rate"]) for r in rows}


def mean_of(run_dir: Path, key: str) -> float:
    with open(run_dir / "metrics.csv") as f:
        vals = [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    return sum(vals) / max(len(vals), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--out", default="outputs/bench_gateway")
    args = ap.parse_args()
    common = [
        f"data.steps={args.steps}",
        f"data.num_val_tasks={args.val}",
        f"data.val_batch_size={args.val}",
        f"trainer.val_check_interval={args.steps}",
        "callbacks.export=null",
        "callbacks.rich_progress=null",
        "trainer.enable_progress_bar=false",
    ]
    rows = []
    for name, overrides in RUNS.items():
        run_dir = Path(args.out) / overrides[0].split("=")[1]
        cmd = [sys.executable, "launch.py", *overrides, *common, f"hydra.run.dir={run_dir}"]
        print(" ".join(cmd), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=os.environ, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        curve = val_curve(run_dir)
        rows.append(
            f"| {name} | {100 * curve[0]:.1f}% | {100 * curve[max(curve)]:.1f}% (step "
            f"{max(curve)}) | {mean_of(run_dir, 'perf/rollout_s'):.1f} s | {wall:.0f} s |"
        )
    print(f"\nheld-out success ({args.val} val tasks, greedy), {args.steps} RL steps, CPU\n")
    print("| path | before RL | after RL | rollout phase per step | wall |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
