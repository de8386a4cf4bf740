"""The Reward contract: ``reward(task, trajectory) -> RewardOutput`` (a float plus named parts).

``score_batch`` is what the training loop calls: it never raises (one exception type aside,
``RewardUnavailable``, which a reward raises on purpose to stop the run cleanly). A reward that
raises, or returns NaN or an infinity (in its total or in a component), marks that episode
failed; the caller counts and skips it.

A reward is any of:

- a callable ``(task, trajectory) -> RewardOutput | float`` (a user's plain function plugs in
  with ``_target_: mymodule.my_reward`` and ``_partial_: true``; a float becomes one component
  named after the function);
- an object that also has ``score_batch(trajectories) -> list[RewardOutput | float |
  BaseException]``, one entry per trajectory: rewards that are cheaper in batch (HTTP, a judge
  or reward model) implement it; an exception in the list fails that episode only;
- optionally ``metrics() -> dict[str, float]``: per-batch statistics (already namespaced, e.g.
  ``reward/api_retries``) that the loop logs after scoring;
- optionally ``state_dict()`` / ``load_state_dict()``: state saved in the run's checkpoints
  (e.g. running normalisation statistics).

A reward that needs a trained model (``reward=learned``, alone or in a composite) gets it from
the run's reward-model stage (``agentrl.rewards.training.reward_model_stage``), which runs before
the policy is loaded; the reward itself never trains. (``LearnedReward.prepare(cfg, suite)``, and
``CompositeReward.prepare`` forwarding to its parts, run that stage for one reward alone, for
scripts; a run does not call ``prepare``.)
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field

from agentrl.types import Trajectory

log = logging.getLogger(__name__)


class RewardUnavailable(RuntimeError):
    """Raised by a reward whose failure policy is ``stop``: the run ends cleanly (the last
    checkpoint, written at the end of an earlier RL step, stays intact) with this message."""


@dataclass
class RewardOutput:
    total: float
    components: dict[str, float] = field(default_factory=dict)


def reward_name(reward_fn) -> str:
    """A short name for a reward: its ``name`` attribute, else the function's name."""
    if getattr(reward_fn, "name", None):
        return str(reward_fn.name)
    fn = reward_fn.func if isinstance(reward_fn, functools.partial) else reward_fn
    return getattr(fn, "__name__", type(fn).__name__)


def as_output(value, name: str) -> RewardOutput:
    """A reward's return value as a RewardOutput (a bare number becomes component ``name``)."""
    if isinstance(value, RewardOutput):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy and torch scalars
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"reward {name!r} returned {type(value).__name__}; "
                "return a float or agentrl.rewards.base.RewardOutput"
            ) from exc
    return RewardOutput(float(value), {name: float(value)})


def check_finite(out: RewardOutput) -> str | None:
    """None when the total and every component are finite, else a message naming the first."""
    if not math.isfinite(out.total):
        return f"non-finite value {out.total}"
    for k, v in out.components.items():
        if not math.isfinite(v):
            return f"non-finite component {k}={v}"
    return None


def raw_outputs(reward_fn, trajectories: list[Trajectory]) -> list:
    """One entry per trajectory: the reward's value, or the exception it raised.

    ``RewardUnavailable`` propagates; every other exception is returned in place.
    """
    if hasattr(reward_fn, "score_batch"):
        try:
            outs = list(reward_fn.score_batch(trajectories))
        except RewardUnavailable:
            raise
        except Exception as exc:
            return [exc] * len(trajectories)
        if len(outs) != len(trajectories):
            err = ValueError(f"score_batch returned {len(outs)} values for {len(trajectories)}")
            return [err] * len(trajectories)
        return outs
    outs = []
    for traj in trajectories:
        try:
            outs.append(reward_fn(traj.task, traj))
        except RewardUnavailable:
            raise
        except Exception as exc:
            outs.append(exc)
    return outs


def score_batch(reward_fn, trajectories: list[Trajectory]) -> dict[str, float]:
    """Fill reward and reward_components of each trajectory in place. Returns failure counts
    (``reward_errors``, ``reward_nonfinite``) and the reward's own metrics (``metrics()``)."""
    counts: dict[str, float] = {"reward_errors": 0, "reward_nonfinite": 0}
    live = [t for t in trajectories if t.status != "failed"]
    name = reward_name(reward_fn)
    outs = raw_outputs(reward_fn, live) if live else []
    for traj, value in zip(live, outs):
        if isinstance(value, BaseException):
            counts["reward_errors"] += 1
            traj.status, traj.error = "failed", f"reward: {type(value).__name__}: {value}"
            log.warning("reward failed on %s: %r", traj.task.id, value)
            continue
        try:
            out = as_output(value, name)
        except TypeError as exc:
            counts["reward_errors"] += 1
            traj.status, traj.error = "failed", f"reward: {exc}"
            continue
        problem = check_finite(out)
        if problem is not None:
            counts["reward_nonfinite"] += 1
            traj.status, traj.error = "failed", f"reward: {problem}"
            continue
        traj.reward = float(out.total)
        traj.reward_components = dict(out.components)
    if hasattr(reward_fn, "metrics"):
        try:
            counts.update(reward_fn.metrics())
        except Exception as exc:  # statistics must not stop training
            log.warning("reward metrics failed: %r", exc)
    return counts
