"""Learning curves from a run's metrics.csv (Lightning's CSVLogger), as a PNG."""

from __future__ import annotations

import csv
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def series(
    rows: list[dict[str, float]], key: str, x: str = "train/rl_step"
) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[key]) for r in rows if key in r and x in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curve(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Validation success (held-out tasks, greedy) and training success/reward per RL step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in [
        ("val/success_rate", "validation success (held-out, greedy)", "o-"),
        ("env/success_rate", "training rollout success (sampled)", "-"),
    ]:
        xs, ys = series(rows, key)
        if xs:
            ax.plot(
                xs, [100 * y for y in ys], style, label=label, alpha=0.9 if "val" in key else 0.5
            )
    ax.set_xlabel("RL step")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or "agentrl learning curve")
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
