"""The real-model recipes across seeds: one curve and one table from finished, evaluated runs.

    python launch.py experiment=smollm2_toolcalc seed=S hydra.run.dir=outputs/smollm2_toolcalc/seedS
    python evaluate.py run_dir=outputs/smollm2_toolcalc/seedS   # the test split of the run's own
                                                                # env settings, baseline + checkpoints
    python bench/real_models.py outputs/smollm2_toolcalc/seed* --save bench/results/smollm2_toolcalc \\
        --png docs/smollm2_toolcalc_curve.png

A run directory is large and stays on the machine that made it; ``--save DIR`` keeps its summary
as ``DIR/seed<S>.json`` (committed), and a ``.json`` summary is accepted wherever a run directory
is, so the table and the curve can be redrawn with every seed that was ever measured.

Per run: validation success along RL (``metrics.csv``), test-split success at the start of RL
(the baseline: the warm start) and at the end (the last checkpoint), the paired-bootstrap CI of
the difference (``eval/metrics.json``), wall time (``launch.log``; a stopped and resumed run's
launches summed) and the median seconds per RL step. Prints a
Markdown table (docs/benchmarks.md, README); ``--png`` draws validation success per seed with the
test-split start and end points.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from agentrl.plotting import read_metrics

PHASES = ("rollout", "score", "advantages", "update", "sync", "log")


def load_run(run: Path) -> dict:
    if run.suffix == ".json":
        out = json.loads(run.read_text())
        for key in ("val", "test_steps"):
            out[key] = [tuple(x) for x in out.get(key, [])]
        if "ci" in out:
            out["ci"] = tuple(out["ci"])
        return out
    rows = read_metrics(run / "metrics.csv")
    val = [(r["train/rl_step"], r["val/success_rate"]) for r in rows if "val/success_rate" in r]
    steps = [r for r in rows if "perf/rollout_s" in r]
    step_s = [sum(r.get(f"perf/{p}_s", 0.0) for p in PHASES) for r in steps]
    out = {
        "run": str(run),
        "seed": _seed(run),
        "val": val,
        "rl_steps": len(steps),
        "step_s": statistics.median(step_s) if step_s else float("nan"),
        "rollout_s": statistics.median(r["perf/rollout_s"] for r in steps) if steps else 0.0,
        "update_s": statistics.median(r["perf/update_s"] for r in steps) if steps else 0.0,
        "wall_s": _wall_seconds(run),
    }
    ev = run / "eval" / "metrics.json"
    if ev.is_file():
        doc = json.loads(ev.read_text())
        results = [r for r in doc["results"]]
        base = [r for r in results if r.get("kind") == "baseline"]
        trained = sorted(
            (r for r in results if r.get("kind") != "baseline"), key=lambda r: r["rl_step"] or 0
        )
        if base and trained:
            out["test_start"] = base[0]["success_rate"]
            out["test_end"] = trained[-1]["success_rate"]
            out["test_steps"] = [(r["rl_step"], r["success_rate"]) for r in trained]
            out["test_tasks"] = base[0]["tasks"]
        for c in doc.get("comparisons", []):
            start_end = c["comparison"] == "last vs baseline" or (
                c["comparison"] == "best vs baseline" and c["b"] == trained[-1]["label"]
            )
            if start_end:
                out["ci"] = (c["diff_points"], c["ci_low"], c["ci_high"])
    return out


def _seed(run: Path) -> str:
    cfg = run / ".hydra" / "config.yaml"
    if cfg.is_file():
        for line in cfg.read_text().splitlines():
            if line.startswith("seed:"):
                return line.split(":", 1)[1].strip()
    return "?"


def _wall_seconds(run: Path) -> float:
    """From the run's launch.log: the time its launches ran, summed. A launch runs from its first
    timestamped line to its last; a launch stopped by SIGTERM/SIGINT ends with its "stopped by
    ..." line (agentrl/stopping.py), and the rerun that resumed it appends to the same file, so
    the time between the stop and the rerun is not counted. (A crashed launch leaves no such
    line: its rerun's time is then counted from the crash's last line.)"""
    log = run / "launch.log"
    if not log.is_file():
        return float("nan")
    from datetime import datetime

    launches: list[list[datetime]] = [[]]
    for line in log.read_text(errors="replace").splitlines():
        if not (line.startswith("[20") and "]" in line):
            continue
        try:
            launches[-1].append(datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f"))
        except ValueError:
            continue
        if "] - stopped by SIG" in line:
            launches.append([])
    spans = [(s[-1] - s[0]).total_seconds() for s in launches if len(s) >= 2]
    return sum(spans) if spans else float("nan")


def table(runs: list[dict]) -> str:
    lines = [
        "| seed | test start | test end | end - start, 95% CI | val along RL | wall | s / RL step (rollout, update) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        val = " -> ".join(f"{100 * v:.0f}" for _, v in r["val"])
        ci = r.get("ci")
        ci_text = f"{ci[0]:+.1f} [{ci[1]:+.1f}, {ci[2]:+.1f}]" if ci else "not evaluated"
        start = f"{100 * r['test_start']:.1f}%" if "test_start" in r else "-"
        end = f"{100 * r['test_end']:.1f}%" if "test_end" in r else "-"
        lines.append(
            f"| {r['seed']} | {start} | {end} | {ci_text} | {val} | {r['wall_s'] / 60:.0f} min | "
            f"{r['step_s']:.0f} ({r['rollout_s']:.0f}, {r['update_s']:.0f}) |"
        )
    return "\n".join(lines)


def plot(runs: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in runs:
        steps, vals = zip(*r["val"]) if r["val"] else ((), ())
        (line,) = ax.plot(steps, [100 * v for v in vals], marker="o", label=f"seed {r['seed']} val")
        if "test_steps" in r:
            ts = [(0, r["test_start"])] + r["test_steps"]
            ax.plot(
                [s for s, _ in ts],
                [100 * v for _, v in ts],
                linestyle="--",
                marker="s",
                color=line.get_color(),
                label=f"seed {r['seed']} test",
            )
    ax.set_xlabel("RL step")
    ax.set_ylabel("success (%), greedy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--png", default=None)
    ap.add_argument("--save", type=Path, default=None, help="write each run's summary here")
    ap.add_argument("--title", default="SmolLM2-135M-Instruct, toolcalc (GRPO, LoRA)")
    args = ap.parse_args()
    runs = [load_run(r) for r in args.runs]
    print(table(runs))
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for path, r in zip(args.runs, runs):
            if path.suffix != ".json":
                out = args.save / f"seed{r['seed']}.json"
                out.write_text(json.dumps(r, indent=1) + "\n")
                print(f"wrote {out}")
    if args.png:
        plot(runs, args.png, args.title)
        print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
