"""The Reward contract (``agentrl.protocols.Reward``): ``reward(task, trajectory) ->
RewardOutput`` (a float plus named parts).

``score_batch`` is what the training loop calls: it never raises (one exception type aside,
``RewardUnavailable``, which a reward raises on purpose to stop the run cleanly). A reward that
raises, or returns NaN or an infinity (in its total or in a component), marks that episode
failed; the caller counts and skips it.

A reward is any of:

- a subclass of ``agentrl.protocols.Reward`` (every reward of the package): ``__call__``, and
  where it has them ``score_batch(trajectories) -> list[RewardOutput | float | BaseException]``
  (cheaper in batch: HTTP, a judge or a reward model; an exception in the list fails that
  episode only), ``metrics() -> dict[str, float]`` (statistics of its last batch, already
  namespaced, e.g. ``reward/api_retries``, which the step's metrics collector logs) and
  ``state_dict()`` / ``load_state_dict()`` (saved in the run's checkpoints, e.g. running
  normalisation statistics); the protocol's defaults say "none";
- a plain callable ``(task, trajectory) -> RewardOutput | float`` (a user's function plugs in
  with ``_target_: mymodule.my_reward`` and ``_partial_: true``; a float becomes one component
  named after the function), or an object of the protocol's shape that does not subclass it:
  ``as_reward`` adapts it, once, where the module (or a composite) receives it.

A reward that needs a trained model (``reward=learned``, alone or in a composite) gets it from
the run's reward-model stage (``agentrl.rewards.training.reward_model_stage``), which runs before
the policy is loaded; the reward itself never trains.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field

from agentrl.protocols import Reward
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


class _Adapted(Reward):
    """A reward written outside the package (a plain function, or an object of the protocol's
    shape that does not subclass it), with the protocol's defaults for what it lacks."""

    def __init__(self, reward):
        self.reward = reward
        self.name = reward_name(reward)
        # a foreign object: its optional members are looked up once, here
        for hook in ("score_batch", "metrics", "state_dict", "load_state_dict"):
            if hasattr(reward, hook):
                setattr(self, hook, getattr(reward, hook))

    def __call__(self, task, trajectory: Trajectory):
        return self.reward(task, trajectory)


def as_reward(reward) -> Reward:
    """``reward`` as a ``Reward``: itself when it subclasses the protocol, else adapted."""
    if Reward in type(reward).__mro__:
        return reward
    if not callable(reward) and not hasattr(reward, "score_batch"):
        raise ValueError(f"a reward must be callable, got {type(reward).__name__}")
    return _Adapted(reward)


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
    try:
        outs = list(as_reward(reward_fn).score_batch(trajectories))
    except RewardUnavailable:
        raise
    except Exception as exc:
        return [exc] * len(trajectories)
    if len(outs) != len(trajectories):
        err = ValueError(f"score_batch returned {len(outs)} values for {len(trajectories)}")
        return [err] * len(trajectories)
    return outs


def score_batch(reward_fn, trajectories: list[Trajectory]) -> dict[str, float]:
    """Fill reward and reward_components of each trajectory in place. Returns the failure
    counts (``reward_errors``, ``reward_nonfinite``); the reward's own statistics are its
    ``metrics()``, which the step's collector reads (``agentrl.metrics_channel``)."""
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
    return counts
