"""A weighted sum of rewards, each normalised as configured.

``total = sum_i weight_i * normalise_i(reward_i)``. Each part is logged: ``reward/<name>`` is
its weighted, normalised contribution (the parts add up to the total), ``reward/<name>/raw``
its raw value, and every component of a part as ``reward/<name>/<component>``.

Normalisations:

- ``none``: the raw value.
- ``running``: ``(x - mean) / std`` with the running mean and standard deviation of every value
  seen so far in training (Welford; the statistics before this batch, then updated with it;
  saved in checkpoints, so a resumed run normalises exactly as the uninterrupted one).
- ``batch``: the z-score within the batch being scored (the episodes of one RL step).

A part whose reward fails on an episode fails that episode (its total would be wrong).
"""

from __future__ import annotations

import math

from agentrl.protocols import Reward
from agentrl.rewards.base import RewardOutput, as_output, as_reward, raw_outputs, reward_name
from agentrl.types import Trajectory

NORMALIZE = ("none", "running", "batch")


class RunningStats:
    """Welford's running mean and variance."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: list[float]) -> None:
        for x in values:
            self.n += 1
            delta = x - self.mean
            self.mean += delta / self.n
            self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n > 1 else 1.0

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.mean, self.m2 = int(state["n"]), float(state["mean"]), float(state["m2"])


class Part:
    """One term of a composite: a reward, its weight and its normalisation."""

    def __init__(self, reward, weight: float = 1.0, normalize: str = "none", eps: float = 1e-6):
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {weight}")
        self.reward = as_reward(reward)
        self.weight = float(weight)
        self.normalize = normalize
        self.eps = eps
        self.stats = RunningStats()


class CompositeReward(Reward):
    """parts: ``{name: {reward: <a reward config>, weight: w, normalize: none|running|batch}}``
    (or Part objects). Running statistics are updated by every scored batch (validation too)."""

    name = "composite"

    def __init__(self, parts: dict, eps: float = 1e-6):
        if not parts:
            raise ValueError("reward.parts is empty: give at least one reward")
        self.parts: dict[str, Part] = {}
        for key, p in parts.items():
            if isinstance(p, Part):
                self.parts[key] = p
            elif hasattr(p, "get") and "reward" in p:
                self.parts[key] = Part(
                    p["reward"], p.get("weight", 1.0), p.get("normalize", "none"), eps
                )
            else:
                raise ValueError(f"reward.parts.{key} needs a 'reward' (got {p!r})")

    # -------------------------------------------------------------- scoring
    def __call__(self, task, trajectory: Trajectory) -> RewardOutput:
        out = self.score_batch([trajectory])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def score_batch(self, trajectories: list[Trajectory]) -> list:
        n = len(trajectories)
        failed: list[BaseException | None] = [None] * n
        raws: dict[str, list[RewardOutput | None]] = {}
        for key, part in self.parts.items():
            values = raw_outputs(part.reward, trajectories)
            raws[key] = []
            for i, v in enumerate(values):
                out = None
                if isinstance(v, BaseException):
                    failed[i] = failed[i] or v
                else:
                    try:
                        out = as_output(v, reward_name(part.reward))
                    except TypeError as exc:
                        failed[i] = failed[i] or exc
                    if out is not None and not math.isfinite(out.total):
                        failed[i] = failed[i] or ValueError(f"{key}: non-finite {out.total}")
                        out = None
                raws[key].append(out)
        ok = [i for i in range(n) if failed[i] is None]
        results: list = [failed[i] for i in range(n)]
        for i in ok:
            results[i] = RewardOutput(0.0, {})
        for key, part in self.parts.items():
            values = [raws[key][i].total for i in ok]
            normed = self._normalise(part, values)
            for i, z in zip(ok, normed):
                contrib = part.weight * z
                res, raw = results[i], raws[key][i]
                res.total += contrib
                res.components[key] = contrib
                res.components[f"{key}/raw"] = raw.total
                for c, v in raw.components.items():
                    if c != reward_name(part.reward) or len(raw.components) > 1:
                        res.components[f"{key}/{c}"] = v
        return results

    def _normalise(self, part: Part, values: list[float]) -> list[float]:
        if part.normalize == "none" or not values:
            return list(values)
        if part.normalize == "batch":
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            return [(v - mean) / (std + part.eps) for v in values]
        stats = part.stats
        if stats.n == 0:
            # nothing seen yet: this batch's own statistics
            stats.update(values)
            mean, std = stats.mean, stats.std
        else:
            mean, std = stats.mean, stats.std
            stats.update(values)
        return [(v - mean) / (std + part.eps) for v in values]

    # -------------------------------------------------------------- hooks
    def metrics(self) -> dict[str, float]:
        out = {}
        for key, part in self.parts.items():
            out.update(part.reward.metrics())
            if part.normalize == "running":
                out[f"reward/{key}/running_mean"] = part.stats.mean
                out[f"reward/{key}/running_std"] = part.stats.std
        return out

    def state_dict(self) -> dict:
        state = {}
        for key, part in self.parts.items():
            state[key] = {"stats": part.stats.state_dict(), "reward": part.reward.state_dict()}
        return state

    def load_state_dict(self, state: dict) -> None:
        for key, part in self.parts.items():
            if key not in state:
                continue
            part.stats.load_state_dict(state[key]["stats"])
            if "reward" in state[key]:
                part.reward.load_state_dict(state[key]["reward"])
