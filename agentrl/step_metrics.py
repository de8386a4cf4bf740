"""What a training step logs: phase timers, episode means and the RL step's metric row."""

from __future__ import annotations

import contextlib
import resource
import time

import numpy as np

from agentrl.types import Trajectory


class Timer:
    """``with timer("rollout"): ...`` adds the block's seconds to ``seconds["rollout"]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def episode_metrics(trajs: list[Trajectory], prefix: str) -> dict[str, float]:
    """Means over episodes: reward, success, turns, generated tokens, invalid actions; none (an
    empty dict) without episodes, so that a step whose rewards all failed logs no nan."""
    if not trajs:  # none (e.g. every reward failed): no means, rather than nan ones
        return {}
    turns = [len(t.turns) for t in trajs]
    invalid = sum(1 for t in trajs for x in t.turns if x.info.get("invalid"))
    return {
        f"{prefix}/reward_mean": float(np.mean([t.reward for t in trajs])),
        f"{prefix}/reward_std": float(np.std([t.reward for t in trajs])),
        f"{prefix}/success_rate": float(np.mean([bool(t.success) for t in trajs])),
        f"{prefix}/turns_mean": float(np.mean(turns)),
        f"{prefix}/generated_tokens_mean": float(np.mean([t.num_generated for t in trajs])),
        f"{prefix}/invalid_action_rate": invalid / max(sum(turns), 1),
        f"{prefix}/truncated_rate": float(np.mean([t.status == "truncated" for t in trajs])),
    }


def train_metrics(host, trajs: list[Trajectory], counts: dict, stats: dict) -> dict[str, float]:
    """The RL step's row: episode means, reward components, env counters, failures, the
    update's ``stats``. ``host`` (the module) gives ``counters`` (updated here), ``rl_step``,
    ``suite`` and ``runner``; ``counts`` are ``score_batch``'s."""
    ok = [t for t in trajs if t.status != "failed"]
    failed = len(trajs) - len(ok)
    host.counters["failed_episodes"] += failed
    m = episode_metrics(ok, prefix="rollout")  # no reward_mean when every reward failed
    if "rollout/success_rate" in m:
        m["env/success_rate"] = m.pop("rollout/success_rate")
    for name in sorted({k for t in ok for k in t.reward_components}):
        m[f"reward/{name}"] = float(np.mean([t.reward_components.get(name, 0.0) for t in ok]))
    # counters an env reports in info["metrics"] (e.g. codegen's sandbox failures): step sums
    for name in sorted({k for t in trajs for x in t.turns for k in x.info.get("metrics", {})}):
        m[f"env/{name}"] = float(
            sum(x.info.get("metrics", {}).get(name, 0.0) for t in trajs for x in t.turns)
        )
    m["rollout/failed_episodes"] = float(failed)
    m["rollout/failed_episodes_total"] = float(host.counters["failed_episodes"])
    m["rollout/reward_errors"] = float(counts["reward_errors"] + counts["reward_nonfinite"])
    # the same count under validation's name for it (val/reward_failures)
    m["rollout/reward_failures"] = m["rollout/reward_errors"]
    # the reward's own per-batch statistics (namespaced by the reward, e.g. reward/api_retries)
    m.update({k: float(v) for k, v in counts.items() if "/" in k})
    m["loss/skipped_updates_total"] = float(host.counters["skipped_updates"])
    m.update({k: v for k, v in stats.items() if not k.startswith("_")})
    if hasattr(host.suite, "metrics"):  # env-specific counts (tool faults, ...), env/<name>
        m.update(host.suite.metrics(trajs))
    m["train/rl_step"] = float(host.rl_step)
    runner = getattr(host, "train_runner", host.runner)
    m.update(runner.metrics() if hasattr(runner, "metrics") else {})
    return m
