"""The evaluation's files: metrics.json, metrics.csv, capability.png, comparison.txt and
trajectories.jsonl (report.html is ``agentrl.evaluation.html``).

Everything is computed first and written last, by ``write_all``: a run that fails before that
leaves an earlier evaluation's files as they were.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from agentrl.evaluation.stats import Comparison, paired_bootstrap, per_task_success
from agentrl.types import Trajectory

LEADING_COLUMNS = ["label", "kind", "names", "rl_step", "suite", "split", "path"]


@dataclass
class Evaluation:
    """Everything an evaluation found.

    rows: one dict per candidate x suite (LEADING_COLUMNS + the stats of ``episode_summary``).
    trajectories: (label, suite) -> the episodes behind that row.
    comparisons: per suite, the paired comparisons (first vs last, best vs baseline).
    notes: sentences a reader should see next to the numbers.
    """

    config: dict
    candidates: list[dict]
    rows: list[dict] = field(default_factory=list)
    trajectories: dict[tuple[str, str], list[Trajectory]] = field(default_factory=dict)
    comparisons: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- comparisons
def _pick_best(rows: list[dict]) -> tuple[dict, str]:
    """The run's own best checkpoint (selected on validation) when evaluated; otherwise the
    highest success here, which is selected on this test set and so optimistic."""
    for r in rows:
        if r["kind"] == "checkpoint" and "best" in r["names"].split():
            return r, "the run's best.ckpt (selected on validation)"
    best = max(rows, key=lambda r: (r["success_rate"], r["rl_step"] or 0))
    return best, "the highest success on this suite (selected on the test set: optimistic)"


def compare(ev: Evaluation, samples: int, seed: int, confidence: float) -> None:
    """Fill ``ev.comparisons``: per suite, first vs last checkpoint, best vs baseline, and last
    vs baseline (when the last checkpoint is not the best)."""
    for suite in dict.fromkeys(r["suite"] for r in ev.rows):
        rows = [r for r in ev.rows if r["suite"] == suite]
        trained = sorted(
            (r for r in rows if r["kind"] != "baseline"),
            key=lambda r: (r["rl_step"] is None, r["rl_step"] or 0),
        )
        base = [r for r in rows if r["kind"] == "baseline"]
        pairs = []
        if len(trained) >= 2:
            pairs.append(("first vs last checkpoint", trained[0], trained[-1], ""))
        if base and trained:
            best, why = _pick_best(trained)
            pairs.append(("best vs baseline", base[0], best, f"best = {why}"))
            if trained[-1]["label"] != best["label"]:
                # the start of RL vs its end: no checkpoint selected at all
                pairs.append(
                    ("last vs baseline", base[0], trained[-1], "the end of RL vs its start")
                )
        for kind, a, b, why in pairs:
            result = paired(ev, suite, a["label"], b["label"], samples, seed, confidence)
            ev.comparisons.append({"suite": suite, "comparison": kind, "note": why, **result})


def paired(ev, suite, a: str, b: str, samples: int, seed: int, confidence: float) -> dict:
    ta, tb = ev.trajectories[(a, suite)], ev.trajectories[(b, suite)]
    comp: Comparison = paired_bootstrap(
        per_task_success(ta), per_task_success(tb), (a, b), samples, seed, confidence
    )
    return comp.to_dict()


def comparison_text(ev: Evaluation) -> str:
    lines = []
    for suite in dict.fromkeys(r["suite"] for r in ev.rows):
        n = next(r for r in ev.rows if r["suite"] == suite)
        lines.append(f"suite {suite} ({n['split']} split, {n['tasks']} tasks)")
        found = [c for c in ev.comparisons if c["suite"] == suite]
        for c in found:
            lines.append(f"  {c['comparison']}: {c['statement']}")
            if c["note"]:
                lines.append(f"    ({c['note']})")
        if not found:
            lines.append("  nothing to compare (one policy evaluated)")
    lines += [f"note: {n}" for n in ev.notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- tables
def columns(rows: list[dict]) -> list[str]:
    rest = []
    for r in rows:
        rest += [k for k in r if k not in LEADING_COLUMNS and k not in rest]
    return LEADING_COLUMNS + rest


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


def _finite(obj):
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def metrics_json(ev: Evaluation) -> str:
    doc = {
        "config": ev.config,
        "candidates": ev.candidates,
        "results": ev.rows,
        "comparisons": ev.comparisons,
        "notes": ev.notes,
    }
    return json.dumps(_finite(doc), indent=2, default=str) + "\n"


def trajectory_records(ev: Evaluation):
    """One JSON-able dict per episode, tagged with its candidate and suite."""
    rl_steps = {r["label"]: r["rl_step"] for r in ev.rows}
    for (label, suite), trajs in ev.trajectories.items():
        for i, t in enumerate(trajs):
            yield {"label": label, "rl_step": rl_steps.get(label), "suite": suite, "episode": i} | (
                t.to_record()
            )


def trajectories_jsonl(ev: Evaluation) -> str:
    return "".join(json.dumps(_finite(r), default=str) + "\n" for r in trajectory_records(ev))


# ----------------------------------------------------------------------------- plot
def capability_png(rows: list[dict], confidence: float = 0.95) -> bytes:
    """Success rate (with its interval as a band) against RL step, one line per suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    by_step = all(r["rl_step"] is not None for r in rows)
    for suite in dict.fromkeys(r["suite"] for r in rows):
        pts = [r for r in rows if r["suite"] == suite]
        if by_step:
            pts.sort(key=lambda r: r["rl_step"])
        xs = [r["rl_step"] if by_step else i for i, r in enumerate(pts)]
        ys = [100 * r["success_rate"] for r in pts]
        lo = [100 * r["success_ci_low"] for r in pts]
        hi = [100 * r["success_ci_high"] for r in pts]
        (line,) = ax.plot(xs, ys, "o-", label=f"{suite} ({pts[0]['split']})")
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
        if not by_step:
            ax.set_xticks(xs, [r["label"] for r in pts], rotation=20, ha="right")
    if by_step:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("RL step" if by_step else "policy")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"capability vs RL step (band: {100 * confidence:.0f}% Wilson interval)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# ----------------------------------------------------------------------------- files
def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_all(ev: Evaluation, output_dir: Path, html: str, png: bytes) -> dict[str, Path]:
    """Write every output file (each atomically) into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics.json": metrics_json(ev).encode(),
        "metrics.csv": csv_text(ev.rows).encode(),
        "capability.png": png,
        "comparison.txt": comparison_text(ev).encode(),
        "trajectories.jsonl": trajectories_jsonl(ev).encode(),
        "report.html": html.encode(),
    }
    out = {}
    for name, data in files.items():
        _write_atomic(output_dir / name, data)
        out[name] = output_dir / name
    return out
