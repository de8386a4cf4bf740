"""``reward=api``: an external HTTP scoring service.

The episodes of a scoring call are sent in batches of ``batch_size``, as ``POST <url>`` with a
JSON body (schema in docs/rewards.md)::

    {"version": 1, "items": [{"id": "<hash>", "task": {...}, "trajectory": {...}}, ...]}

and the service answers ``{"results": [{"id": "<hash>", "reward": 0.5, "components": {...}}]}``
(``components`` optional; results are matched by ``id``, in any order).

Each batch gets ``timeout_s`` per attempt and up to ``max_retries`` retries with exponential
backoff (``backoff_s * 2**attempt``, capped by ``backoff_max_s``) on connection errors,
timeouts, HTTP 429 and 5xx, and malformed answers; other 4xx answers are not retried. At most
``max_concurrency`` batches are in flight. An auth header is read from the environment variable
named by ``auth_env`` when a request is made: the config holds only the variable's name, and
the value is never logged. Answers are cached (``cache_size`` most recent episodes, keyed by a
hash of the item), so a repeated episode costs no request.

When a batch still fails after its retries, ``on_failure`` decides: ``drop`` fails its episodes
(counted in ``rollout/failed_episodes``, training goes on), ``default`` gives them
``default_value``, ``stop`` raises ``RewardUnavailable``: the run stops with one line, its last
checkpoint (from the previous RL step) intact, and resumes from it when rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from agentrl.protocols import Reward
from agentrl.rewards.base import RewardOutput, RewardUnavailable
from agentrl.types import Task, Trajectory

log = logging.getLogger(__name__)

POLICIES = ("drop", "default", "stop")
SCHEMA_VERSION = 1


class ScoringError(RuntimeError):
    """A batch the service did not score after every retry."""


class _Retryable(Exception):
    pass


def task_record(task: Task) -> dict:
    return {"id": task.id, "prompt": task.prompt, "answer": task.answer, "meta": task.meta}


def trajectory_record(traj: Trajectory) -> dict:
    """What a scorer sees of an episode: the text of every turn, the env's outcome."""
    return {
        "turns": [
            {"action": t.action, "observation": t.observation, "reward": t.reward}
            for t in traj.turns
        ],
        "success": traj.success,
        "status": traj.status,
        "num_generated": traj.num_generated,
    }


def item_record(traj: Trajectory) -> dict:
    body = {"task": task_record(traj.task), "trajectory": trajectory_record(traj)}
    blob = json.dumps(body, sort_keys=True, default=str)
    return {"id": hashlib.sha256(blob.encode()).hexdigest()[:24], **body}


class ApiReward(Reward):
    """See the module docstring; every argument is a field of conf/reward/api.yaml."""

    name = "api"

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000/score",
        batch_size: int = 16,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_concurrency: int = 4,
        auth_env: str | None = "AGENTRL_REWARD_API_KEY",
        auth_header: str = "Authorization",
        auth_scheme: str = "Bearer",
        cache_size: int = 10000,
        on_failure: str = "drop",
        default_value: float = 0.0,
    ):
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"reward.url must start with http:// or https://, got {url!r}")
        for key, value in [("batch_size", batch_size), ("max_concurrency", max_concurrency)]:
            if value < 1:
                raise ValueError(f"reward.{key} must be >= 1, got {value}")
        if not timeout_s > 0:
            raise ValueError(f"reward.timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0 or backoff_s < 0 or cache_size < 0:
            raise ValueError("reward.max_retries, backoff_s and cache_size must be >= 0")
        if on_failure not in POLICIES:
            raise ValueError(f"reward.on_failure must be one of {POLICIES}, got {on_failure!r}")
        if not math.isfinite(default_value):
            raise ValueError(f"reward.default_value must be finite, got {default_value}")
        self.url = url
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_concurrency = max_concurrency
        self.auth_env = auth_env
        self.auth_header = auth_header
        self.auth_scheme = auth_scheme
        self.cache_size = cache_size
        self.on_failure = on_failure
        self.default_value = float(default_value)
        self._cache: OrderedDict[str, RewardOutput] = OrderedDict()
        self._stats: dict[str, float] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------- the reward
    def __call__(self, task: Task, trajectory: Trajectory) -> RewardOutput:
        out = self.score_batch([trajectory])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def score_batch(self, trajectories: list[Trajectory]) -> list:
        self._stats = {"requests": 0, "retries": 0, "failed": 0, "cache_hits": 0, "latency": 0.0}
        items = [item_record(t) for t in trajectories]
        results: dict[str, RewardOutput | BaseException] = {}
        todo = []
        for item in items:
            if item["id"] in self._cache:
                self._cache.move_to_end(item["id"])
                results[item["id"]] = self._cache[item["id"]]
                self._stats["cache_hits"] += 1
            elif item["id"] not in {i["id"] for i in todo}:
                todo.append(item)
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        if batches:
            workers = min(self.max_concurrency, len(batches))
            with ThreadPoolExecutor(workers, thread_name_prefix="reward-api") as pool:
                for batch, got in zip(batches, pool.map(self._score_remote, batches)):
                    self._collect(batch, got, results)
        return [results[i["id"]] for i in items]

    def _collect(self, batch: list[dict], got, results: dict) -> None:
        if isinstance(got, ScoringError):
            self._stats["failed"] += len(batch)
            if self.on_failure == "stop":
                raise RewardUnavailable(f"reward service {self.url}: {got}")
            log.warning("reward service %s: %s (on_failure=%s)", self.url, got, self.on_failure)
            for item in batch:
                if self.on_failure == "default":
                    v = self.default_value
                    results[item["id"]] = RewardOutput(v, {"api": v, "api_default": 1.0})
                else:
                    results[item["id"]] = got
            return
        for item in batch:
            out = got[item["id"]]
            results[item["id"]] = out
            if self.cache_size:
                self._cache[item["id"]] = out
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)

    def metrics(self) -> dict[str, float]:
        s = self._stats
        if not s:
            return {}
        return {
            "reward/api_requests": s["requests"],
            "reward/api_retries": s["retries"],
            "reward/api_failed_episodes": s["failed"],
            "reward/api_cache_hits": s["cache_hits"],
            "reward/api_latency_s": s["latency"] / max(s["requests"], 1),
        }

    def _count(self, key: str, value: float) -> None:
        with self._lock:
            self._stats[key] += value

    # -------------------------------------------------------------- HTTP
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.auth_env:
            secret = os.environ.get(self.auth_env)
            if secret:
                headers[self.auth_header] = f"{self.auth_scheme} {secret}".strip()
        return headers

    def _score_remote(self, batch: list[dict]):
        """The batch's outputs by id, or a ScoringError after every retry."""
        body = json.dumps({"version": SCHEMA_VERSION, "items": batch}, default=str).encode()
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries", 1)
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s))
            try:
                return self._post(body, batch)
            except _Retryable as exc:
                last = str(exc)
            except ScoringError as exc:
                return exc
        return ScoringError(f"{last} (after {self.max_retries + 1} attempts)")

    def _post(self, body: bytes, batch: list[dict]) -> dict[str, RewardOutput]:
        request = urllib.request.Request(self.url, data=body, headers=self._headers())
        self._count("requests", 1)
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}") from None
            raise ScoringError(f"HTTP {exc.code} {exc.reason} (not retried)") from None
        except TimeoutError:
            raise _Retryable(f"timed out after {self.timeout_s}s") from None
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timed out after {self.timeout_s}s") from None
            raise _Retryable(f"cannot connect: {reason}") from None
        finally:
            self._count("latency", time.perf_counter() - start)
        return parse_results(raw, batch)


def parse_results(raw: bytes, batch: list[dict]) -> dict[str, RewardOutput]:
    """The service's answer as outputs by id; a malformed answer is retryable."""
    try:
        data = json.loads(raw)
        results = data["results"]
        out = {}
        for r in results:
            reward = float(r["reward"])
            comps = {str(k): float(v) for k, v in (r.get("components") or {}).items()}
            out[str(r["id"])] = RewardOutput(reward, {"api": reward, **comps})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _Retryable(f"malformed answer ({type(exc).__name__}: {exc})"[:200]) from None
    missing = [i["id"] for i in batch if i["id"] not in out]
    if missing:
        raise _Retryable(f"malformed answer: {len(missing)} of {len(batch)} ids missing")
    return out
