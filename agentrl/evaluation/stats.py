"""Capability statistics as pure functions of episode outcomes (no model, no files).

Intervals are two-sided at ``confidence`` (0.95 by default). Bootstraps resample *tasks* (with all
their episodes), since episodes of one task are not independent, and take a ``seed`` so the same
inputs always give the same interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from agentrl.types import Trajectory


def z_value(confidence: float) -> float:
    """The standard normal quantile of a two-sided interval (1.96 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (nan, nan) when n == 0.

    center = (p + z²/2n) / (1 + z²/n),  half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    """
    if n == 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def _resample_means(values: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Means of ``samples`` bootstrap resamples of the rows of ``values`` ([n] or [n, ...])."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_mean_interval(
    values, samples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per task)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    means = _resample_means(values, samples, seed)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task from n samples with c successes (Chen et al., 2021):
    1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement hold a success."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {c}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(per_task: list[tuple[int, int]], k: int) -> float:
    """pass@k averaged over tasks, each given as (n samples, c successes)."""
    return float(np.mean([pass_at_k(n, c, k) for n, c in per_task]))


def group_by_task(trajs: list[Trajectory]) -> dict[str, list[Trajectory]]:
    """Episodes by task id, tasks in first-seen order."""
    out: dict[str, list[Trajectory]] = {}
    for t in trajs:
        out.setdefault(t.task.id, []).append(t)
    return out


def per_task_success(trajs: list[Trajectory]) -> dict[str, float]:
    """The success rate of each task over its episodes."""
    return {
        k: float(np.mean([bool(t.success) for t in v])) for k, v in group_by_task(trajs).items()
    }


def turn_rates(trajs: list[Trajectory]) -> dict[str, float]:
    """Per-turn rates over all turns of all episodes.

    invalid_action_rate: turns the env flagged malformed (``info["invalid"]``).
    tool_error_rate: well-formed turns that still carry an error (``info["error"]``: a tool that
    failed, or an env that raised).
    """
    turns = [x for t in trajs for x in t.turns]
    invalid = sum(bool(x.info.get("invalid")) for x in turns)
    tool_errors = sum(bool(x.info.get("error")) and not x.info.get("invalid") for x in turns)
    total = max(len(turns), 1)
    return {"invalid_action_rate": invalid / total, "tool_error_rate": tool_errors / total}


def episode_summary(
    trajs: list[Trajectory],
    pass_k: list[int],
    samples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Every metric of one checkpoint on one suite. pass@k is reported for each k <= the fewest
    episodes any task got."""
    by_task = group_by_task(trajs)
    wins = sum(bool(t.success) for t in trajs)
    low, high = wilson_interval(wins, len(trajs), confidence)
    task_reward = [float(np.mean([t.reward for t in v])) for v in by_task.values()]
    r_low, r_high = bootstrap_mean_interval(task_reward, samples, seed, confidence)
    out = {
        "tasks": len(by_task),
        "episodes": len(trajs),
        "success_rate": wins / max(len(trajs), 1),
        "success_ci_low": low,
        "success_ci_high": high,
        "reward_mean": float(np.mean([t.reward for t in trajs])) if trajs else math.nan,
        "reward_ci_low": r_low,
        "reward_ci_high": r_high,
    }
    counts = [(len(v), sum(bool(t.success) for t in v)) for v in by_task.values()]
    n_min = min((n for n, _ in counts), default=0)
    for k in sorted(set(pass_k)):
        if k <= n_min:
            out[f"pass@{k}"] = mean_pass_at_k(counts, k)
    out["turns_mean"] = float(np.mean([len(t.turns) for t in trajs])) if trajs else math.nan
    out["generated_tokens_mean"] = (
        float(np.mean([t.num_generated for t in trajs])) if trajs else math.nan
    )
    out.update(turn_rates(trajs))
    out["truncated_rate"] = float(np.mean([t.status == "truncated" for t in trajs]))
    out["failed_rate"] = float(np.mean([t.status == "failed" for t in trajs]))
    return out


@dataclass
class Comparison:
    """B - A on the same tasks, in percentage points of success rate."""

    a: str
    b: str
    tasks: int
    success_a: float
    success_b: float
    diff_points: float
    ci_low: float
    ci_high: float
    confidence: float

    @property
    def significant(self) -> bool:
        return not self.ci_low <= 0.0 <= self.ci_high

    def statement(self) -> str:
        """One plain sentence, e.g. "B is better than A by 12.0 points, 95% CI [7.0, 17.0]"."""
        ci = f"{100 * self.confidence:.0f}% CI [{self.ci_low:.1f}, {self.ci_high:.1f}]"
        if not self.significant:
            return (
                f"no significant difference between {self.b} and {self.a}: "
                f"{self.b} - {self.a} = {self.diff_points:+.1f} points, {ci}"
            )
        word = "better" if self.diff_points > 0 else "worse"
        return f"{self.b} is {word} than {self.a} by {abs(self.diff_points):.1f} points, {ci}"

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant, "statement": self.statement()}


def paired_bootstrap(
    a: dict[str, float],
    b: dict[str, float],
    names: tuple[str, str] = ("A", "B"),
    samples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    """Paired bootstrap of mean(b) - mean(a) over the tasks both were run on.

    ``a`` and ``b`` map task id -> per-task success rate; the same resampled tasks are used for
    both, so task difficulty cancels out. Raises ValueError when the task sets differ.
    """
    if set(a) != set(b):
        raise ValueError(
            f"{names[0]} and {names[1]} were not run on the same tasks "
            f"({len(set(a) ^ set(b))} task ids differ)"
        )
    if not a:
        raise ValueError("no tasks to compare")
    keys = sorted(a)
    diff = 100 * (np.array([b[k] for k in keys]) - np.array([a[k] for k in keys]))
    means = _resample_means(diff, samples, seed)
    alpha = (1 - confidence) / 2
    return Comparison(
        a=names[0],
        b=names[1],
        tasks=len(keys),
        success_a=float(np.mean([a[k] for k in keys])),
        success_b=float(np.mean([b[k] for k in keys])),
        diff_points=float(diff.mean()),
        ci_low=float(np.quantile(means, alpha)),
        ci_high=float(np.quantile(means, 1 - alpha)),
        confidence=confidence,
    )
