"""Multi-turn episodes: the policy (through a RolloutEngine) acting in env episodes, in batch.

Every live episode of a turn is generated in one batched call; each is then extended by its own
generated ids and the ids of the env's observation (see ChatFormat). An exception raised by an
env marks that episode "failed" (counted by the caller) and never stops the batch.
"""

from __future__ import annotations

import logging

import torch

from agentrl import stopping
from agentrl.protocols import Runner
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.engine import Generation, PrefixCache, SamplingParams
from agentrl.types import Task, Trajectory, Turn

log = logging.getLogger(__name__)


class _Episode:
    def __init__(self, task: Task, group: int, env, prompt_ids: list[int]):
        self.env = env
        self.done = False
        self.traj = Trajectory(
            task=task,
            token_ids=list(prompt_ids),
            loss_mask=[0] * len(prompt_ids),
            logprobs=[0.0] * len(prompt_ids),
            prompt_len=len(prompt_ids),
            group=group,
        )

    def extend(self, ids: list[int], generated: bool, logprobs: list[float] | None = None):
        t = self.traj
        t.token_ids.extend(ids)
        t.loss_mask.extend([1 if generated else 0] * len(ids))
        t.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    def fail(self, where: str, exc: BaseException):
        self.traj.status = "failed"
        self.traj.error = f"{where}: {type(exc).__name__}: {exc}"
        self.done = True
        log.warning("episode %s failed in %s: %r", self.traj.task.id, where, exc)


class EpisodeRunner(Runner):
    """Runs episodes of one env suite with one engine (``sampling`` and ``metrics``: the
    ``Runner`` protocol's).

    max_seq_len: an episode whose tokens would exceed this is stopped ("truncated").
    """

    def __init__(self, engine, chat: ChatFormat, suite, max_seq_len: int):
        self.engine = engine
        self.chat = chat
        self.suite = suite
        self.max_seq_len = max_seq_len
        # a threading.Event that, once set, abandons the episodes between turns as a stop
        # signal does (rollout.pipeline=overlap sets it to stop its rollout thread)
        self.cancel = None
        # the last run's prompt tokens served from the engine's prefix cache, and run through
        # the model (an engine that reuses_prefixes keeps each episode's KV between turns)
        self._prefix_counts: tuple[int, int] | None = None

    def _start(self, task: Task, group: int) -> _Episode:
        env = self.suite.make()
        ep = _Episode(task, group, env, [])
        try:
            obs = env.reset(task)
            ids = self.chat.prompt_ids(env.system_prompt, obs)
            ep.extend(ids, generated=False)
            ep.traj.prompt_len = len(ids)
        except Exception as exc:  # an env bug must not stop training
            ep.fail("reset", exc)
        return ep

    def run(
        self,
        tasks: list[Task],
        groups: list[int],
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> list[Trajectory]:
        """One episode per task (repeat a task to sample a group). Returns them in input order."""
        episodes = [self._start(t, g) for t, g in zip(tasks, groups)]
        # one per batch: its caches belong to this batch's episodes and the weights of now
        kwargs = {"prefixes": PrefixCache()} if getattr(self.engine, "reuses_prefixes", 0) else {}
        for _ in range(max(self.suite.max_turns, 1)):
            live = [e for e in episodes if not e.done]
            cancelled = self.cancel is not None and self.cancel.is_set()
            if not live or stopping.requested() or cancelled:  # a stop abandons the episodes
                break
            prompts = [e.traj.token_ids for e in live]
            gens = self.engine.generate(prompts, params, generator, **kwargs)
            for ep, gen in zip(live, gens):
                self._advance(ep, gen)
        if kwargs:
            self._prefix_counts = (kwargs["prefixes"].reused, kwargs["prefixes"].fed)
        for ep in episodes:
            if not ep.done:
                ep.traj.status = "truncated"
            self._verify(ep)
        return [e.traj for e in episodes]

    def metrics(self) -> dict[str, float]:
        """``rollout/prefix_reused_frac``: the share of the last batch's prompt tokens that the
        engine took from its prefix cache rather than running them through the model again
        (absent for an engine without one)."""
        if self._prefix_counts is None:
            return {}
        reused, fed = self._prefix_counts
        return {"rollout/prefix_reused_frac": reused / max(reused + fed, 1)}

    def _advance(self, ep: _Episode, gen: Generation) -> None:
        start = len(ep.traj.token_ids)
        ep.extend(gen.token_ids, generated=True, logprobs=gen.logprobs)
        span = (start, len(ep.traj.token_ids))
        if not gen.token_ids or gen.token_ids[-1] != self.chat.end_of_turn_id:
            # cut by a stop string or the length cap: close the turn as the template would
            ep.extend([self.chat.end_of_turn_id], generated=False)
        ids = [i for i in gen.token_ids if i != self.chat.end_of_turn_id]
        action = self.chat.tokenizer.decode(ids, skip_special_tokens=True)
        try:
            obs, reward, done, info = ep.env.step(action)
        except Exception as exc:
            ep.traj.turns.append(Turn(action, "", 0.0, span, {"error": repr(exc)}))
            ep.fail("step", exc)
            return
        ep.traj.turns.append(Turn(action, obs, float(reward), span, dict(info)))
        if done:
            ep.done = True
            if info.get("truncated"):
                ep.traj.status = "truncated"
            return
        obs_ids = self.chat.observation_ids(obs)
        if len(ep.traj.token_ids) + len(obs_ids) + self.suite.max_action_tokens > self.max_seq_len:
            ep.traj.status = "truncated"
            ep.done = True
            return
        ep.extend(obs_ids, generated=False)

    def _verify(self, ep: _Episode) -> None:
        if ep.traj.status == "failed":
            ep.traj.success = False
            return
        try:
            ep.traj.success = bool(self.suite.verify(ep.traj.task, ep.env))
        except Exception as exc:
            ep.traj.success = False
            ep.fail("verify", exc)

    def demonstration(self, task: Task, actions: list[str]) -> Trajectory:
        """Replay an oracle's actions through a fresh env: the token-exact SFT example."""
        ep = self._start(task, 0)
        if ep.done:
            raise RuntimeError(f"cannot replay task {task.id}: {ep.traj.error}")
        for action in actions:
            ids = self.chat.action_ids(action)
            self._advance(ep, Generation(ids, [0.0] * len(ids), "stop"))
            if ep.done:
                break
        self._verify(ep)
        return ep.traj
