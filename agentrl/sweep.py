"""Aggregate a ``--multirun`` sweep: one row per configuration (the overrides of a run, seed
left out), with the mean and a confidence interval across seeds of the final and the best
validation success (``val/success_rate``), written as ``sweep.md``, ``sweep.csv`` and
``sweep.png`` (the learning curves, mean and interval across seeds, one line per configuration).

    python -m agentrl.sweep multirun/2026-11-25/10-00-00 [--confidence 0.95] [--out DIR]

The interval is Student's t over the per-seed values (mean ± t·s/√n): with the 3 to 5 seeds of a
typical sweep a bootstrap interval (``agentrl.evaluation.stats``) cannot be wider than the range
of the seeds and badly under-covers; the t interval is honest about how little 3 seeds say.
A run without any validation row (failed, or still running) is listed as incomplete, not
averaged in.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from agentrl.evaluation.stats import z_value

METRIC = "val/success_rate"
STEP = "train/rl_step"


@dataclass
class Run:
    path: Path
    config: str
    seed: str
    curve: list[tuple[float, float]]  # (RL step, val/success_rate), in step order


def load_runs(sweep_dir: Path, seed_key: str = "seed") -> list[Run]:
    """Every run under ``sweep_dir`` (a folder holding ``.hydra/overrides.yaml``)."""
    runs = []
    for overrides_file in sorted(sweep_dir.glob("**/.hydra/overrides.yaml")):
        run_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{seed_key}=")), "")
        rest = [o for o in overrides if not o.startswith((f"{seed_key}=", "hydra."))]
        runs.append(Run(run_dir, " ".join(rest) or "(defaults)", seed, read_curve(run_dir)))
    return runs


def read_curve(run_dir: Path) -> list[tuple[float, float]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(METRIC) and r.get(STEP)]
    # a step validated twice (a resumed run) counts once: the last row wins
    return sorted({float(r[STEP]): float(r[METRIC]) for r in rows}.items())


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student t quantile (e.g. 4.30 for 0.95 and df=2), by bisection on the
    CDF, which is integrated numerically (no scipy)."""
    z = z_value(confidence)  # validates confidence
    target = 0.5 + confidence / 2
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 20001)
        pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
        return 0.5 + float(np.sum((pdf[1:] + pdf[:-1]) / 2) * (t[1] - t[0]))

    lo, hi = z, max(z * 50, 1e3)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < target else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values: list[float], confidence: float) -> tuple[float, float, float]:
    """(mean, low, high) across seeds; the interval is (nan, nan) with one seed."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = t_quantile(confidence, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean, mean - half, mean + half


def aggregate(runs: list[Run], confidence: float = 0.95) -> list[dict]:
    """One row per configuration, in first-seen order."""
    by_config: dict[str, list[Run]] = {}
    for r in runs:
        by_config.setdefault(r.config, []).append(r)
    rows = []
    for config, group in by_config.items():
        done = [r for r in group if r.curve]
        row = {
            "config": config,
            "seeds": len(done),
            "incomplete": len(group) - len(done),
        }
        if done:
            for name, values in (
                ("final", [r.curve[-1][1] for r in done]),
                ("best", [max(v for _, v in r.curve) for r in done]),
            ):
                mean, lo, hi = mean_interval(values, confidence)
                row.update({f"{name}_mean": mean, f"{name}_low": lo, f"{name}_high": hi})
            row["final_step"] = min(r.curve[-1][0] for r in done)
        rows.append(row)
    return rows


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def to_markdown(rows: list[dict], confidence: float) -> str:
    c = f"{100 * confidence:g}%"
    lines = [
        f"| configuration | seeds | final val success % (mean [{c} CI]) "
        f"| best val success % (mean [{c} CI]) | incomplete runs |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = []
        for name in ("final", "best"):
            cells.append(
                f"{_pct(r.get(f'{name}_mean'))} [{_pct(r.get(f'{name}_low'))}, "
                f"{_pct(r.get(f'{name}_high'))}]"
            )
        lines.append(
            f"| {r['config']} | {r['seeds']} | {cells[0]} | {cells[1]} | {r['incomplete']} |"
        )
    return "\n".join(lines) + "\n"


FIELDS = [
    "config",
    "seeds",
    "incomplete",
    "final_step",
    "final_mean",
    "final_low",
    "final_high",
    "best_mean",
    "best_low",
    "best_high",
]


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot(runs: list[Run], rows: list[dict], path: Path, confidence: float) -> None:
    """Mean validation curve per configuration, with its interval across seeds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in rows:
        curves = [dict(r.curve) for r in runs if r.config == row["config"] and r.curve]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        stats = [mean_interval([c[s] for c in curves], confidence) for s in steps]
        mean = [m for m, _, _ in stats]
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=f"{row['config']} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(
                steps,
                [lo for _, lo, _ in stats],
                [hi for _, _, hi in stats],
                color=line.get_color(),
                alpha=0.15,
            )
    ax.set_xlabel("RL step")
    ax.set_ylabel("validation success")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"mean across seeds, {100 * confidence:g}% t interval shaded")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentrl.sweep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="a --multirun folder (hydra.sweep.dir)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level")
    parser.add_argument("--seed-key", default="seed", help="the override that varies the seed")
    parser.add_argument("--out", type=Path, default=None, help="output folder (the sweep's)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    if not 0 < args.confidence < 1:
        print(f"error: --confidence must be in (0, 1), got {args.confidence}", file=sys.stderr)
        return 2
    runs = load_runs(args.sweep_dir, args.seed_key)
    if not runs:
        print(
            f"error: no runs under {args.sweep_dir} (no */.hydra/overrides.yaml)", file=sys.stderr
        )
        return 2
    rows = aggregate(runs, args.confidence)
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    table = to_markdown(rows, args.confidence)
    (out / "sweep.md").write_text(table)
    write_csv(rows, out / "sweep.csv")
    plot(runs, rows, out / "sweep.png", args.confidence)
    print(table, end="")
    print(f"{len(runs)} runs, {len(rows)} configurations -> {out}/sweep.md, sweep.csv, sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
