"""Every algorithm on the same toolcalc budget: validation-success curves, one plot, one table.

    python bench/algorithms.py                       # run all, then plot and write the table
    python bench/algorithms.py --algos dpo,online_dpo   # run some (the others' results are kept)
    python bench/algorithms.py --plot-only           # redraw from the results already there

Each algorithm runs ``python launch.py experiment=toolcalc_<algo>`` with the same budget
overrides (``--steps`` RL steps of ``--tasks`` tasks, validation on ``--val`` held-out tasks every
``--every`` steps and before RL), one run at a time, in ``--out/<algo>`` (Hydra's run dir). The
warm start is cached (``AGENTRL_CACHE``) and shared by every run, since the model, env and
warm-start settings are the same. Each run's validation curve and wall time go into
``--out/<algo>/result.json`` (merged into ``--out/summary.json`` and copied beside the table
as JSON); the plot into ``--plot``; the Markdown table is printed and written to ``--table``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentrl.plotting import read_metrics, series  # noqa: E402

ALGOS = ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "ppo", "dpo", "online_dpo"]


def budget(args) -> list[str]:
    return [
        f"data.steps={args.steps}",
        f"data.tasks_per_step={args.tasks}",
        f"data.num_val_tasks={args.val}",
        f"data.val_batch_size={args.val}",
        f"trainer.val_check_interval={args.every}",
        f"seed={args.seed}",
        "callbacks.step_checkpoints=null",
        "callbacks.export=null",
        "callbacks.rich_progress=null",
        "trainer.enable_progress_bar=false",
    ]


def run_one(algo: str, args) -> dict:
    out = Path(args.out) / algo
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [
        sys.executable,
        str(ROOT / "launch.py"),
        f"experiment=toolcalc_{algo}",
        *budget(args),
        f"hydra.run.dir={out}",
    ]
    print("running:", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.log").write_text(proc.stdout + proc.stderr)
    result = {"algo": algo, "wall_s": round(wall, 1), "returncode": proc.returncode}
    metrics = out / "metrics.csv"
    if proc.returncode == 0 and metrics.exists():
        rows = read_metrics(metrics)
        steps, vals = series(rows, "val/success_rate")
        result["val_steps"] = [int(s) for s in steps]
        result["val_success"] = vals
        _, train = series(rows, "env/success_rate")
        # offline DPO samples no episodes in training: no training success to report
        result["train_success_last5"] = sum(train[-5:]) / len(train[-5:]) if train else None
    else:
        result["error"] = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return result


def collect(out: Path) -> dict[str, dict]:
    """Every algorithm's result under ``out``: the last summary, updated by each
    ``<algo>/result.json`` (runs made by separate invocations of this script are merged)."""
    summary = out / "summary.json"
    results = json.loads(summary.read_text()) if summary.exists() else {}
    for path in sorted(out.glob("*/result.json")):
        r = json.loads(path.read_text())
        results[r["algo"]] = r
    return results


def plot(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for algo in ALGOS:
        r = results.get(algo)
        if r and r.get("val_steps"):
            ax.plot(r["val_steps"], [100 * v for v in r["val_success"]], "o-", label=algo)
    ax.set_xlabel("RL step")
    ax.set_ylabel("validation success (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, dict]) -> str:
    lines = [
        "| algorithm | start | best | end | end - start | train success (last 5 steps) | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for algo in ALGOS:
        r = results.get(algo)
        if not r:
            continue
        if not r.get("val_success"):
            lines.append(f"| {algo} | failed: {r.get('error', '?')} | | | | | |")
            continue
        v = [100 * x for x in r["val_success"]]
        train = r.get("train_success_last5")
        train = "n/a (offline)" if not train and algo == "dpo" else f"{100 * (train or 0):.0f}%"
        lines.append(
            f"| {algo} | {v[0]:.0f}% | {max(v):.0f}% | {v[-1]:.0f}% | {v[-1] - v[0]:+.0f} | "
            f"{train} | {r['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default=",".join(ALGOS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench_algorithms"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "algorithms_curves.png"))
    p.add_argument("--table", default=str(ROOT / "bench" / "results" / "algorithms_table.md"))
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.plot_only:
        for algo in args.algos.split(","):
            if algo not in ALGOS:
                raise SystemExit(f"unknown algorithm {algo!r}; choose from {ALGOS}")
            run_one(algo, args)
    results = collect(Path(args.out))
    (Path(args.out) / "summary.json").write_text(json.dumps(results, indent=1))
    # the measured curves, kept beside the table (the run directories are not committed)
    Path(args.table).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    title = (
        f"toolcalc, tiny model: {args.steps} RL steps x {args.tasks} tasks, "
        f"validation on {args.val} held-out tasks (greedy)"
    )
    plot(results, Path(args.plot), title)
    text = table(results)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
