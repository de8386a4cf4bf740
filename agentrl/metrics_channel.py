"""One channel for the metrics that components report about a training step.

Every training step (``rl_step`` through ``step_metrics.train_metrics``, ``preference_step``
directly) gets its components' metrics from ``component_metrics``, the one place that reads
them. Each source is read once per step, with the metrics protocol of ``agentrl.protocols``
(a snapshot of the last batch and of running ``*_total`` counts; reading resets nothing), and
each has its namespace:

    env/                    what env steps report in ``info["metrics"]`` (counters, e.g.
                            codegen's sandbox failures), summed over the step's turns; and
                            ``suite.metrics(trajectories)`` of suites that count their own
                            faults (tooluse's tool errors and service restarts)
    reward/                 ``reward.metrics()`` (e.g. ``reward/api_retries``,
                            ``reward/rm_success_auc``), when the step scored with the reward
    <runner.namespace>/     ``runner.metrics()`` (``gateway/...`` for ``env=external``)

A key that already carries its source's namespace is kept as it is; another key gets it
(``sandbox_failures`` -> ``env/sandbox_failures``). A key that two sources report is counted
once: the first source keeps it, and the clash is logged. A source whose ``metrics`` raises is
logged and skipped: statistics never stop training.
"""

from __future__ import annotations

import logging

from agentrl.types import Trajectory

log = logging.getLogger(__name__)


def namespaced(prefix: str, metrics: dict) -> dict[str, float]:
    """``metrics`` with every key under ``prefix/`` (a key already there is kept)."""
    head = f"{prefix}/"
    return {(k if k.startswith(head) else head + k): float(v) for k, v in metrics.items()}


def env_step_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    """The sums over every turn of ``trajs`` of the counters env steps put in
    ``info["metrics"]``, failed episodes included (their turns ran)."""
    out: dict[str, float] = {}
    for t in trajs:
        for turn in t.turns:
            for k, v in turn.info.get("metrics", {}).items():
                out[k] = out.get(k, 0.0) + float(v)
    return {k: out[k] for k in sorted(out)}


def suite_metrics(suite, trajs: list[Trajectory]) -> dict:
    """``suite.metrics(trajs)``; {} for a suite without it (an env suite may be written outside
    the package, against the structural ``EnvSuite`` protocol whose ``metrics`` is optional)."""
    metrics = getattr(suite, "metrics", None)
    return metrics(trajs) if callable(metrics) else {}


def component_metrics(module, trajs: list[Trajectory], rewarded: bool) -> dict[str, float]:
    """The step's component metrics, namespaced. ``module`` gives ``suite``, ``reward`` and
    ``runner``; ``trajs`` are the episodes the step ran; ``rewarded``: the step scored them
    with ``module.reward`` (a preference step on env or file pairs does not)."""
    sources = [
        ("env", lambda: env_step_metrics(trajs)),
        ("env", lambda: suite_metrics(module.suite, trajs)),
    ]
    if rewarded:
        sources.append(("reward", module.reward.metrics))
    # the runner of the training rollouts (rollout.pipeline=overlap's thread has its own)
    runner = getattr(module, "train_runner", module.runner)
    sources.append((runner.namespace, runner.metrics))
    out: dict[str, float] = {}
    for prefix, read in sources:
        try:
            got = namespaced(prefix, read())
        except Exception as exc:  # statistics must not stop training
            log.warning("%s metrics failed: %r", prefix, exc)
            continue
        for key, value in got.items():
            if key in out:
                log.warning("metric %s reported twice; the first value is kept", key)
                continue
            out[key] = value
    return out
