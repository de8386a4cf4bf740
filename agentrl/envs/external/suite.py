"""``env=external``: train an agent program we did not write, through the OpenAI-compatible gateway.

Each rollout runs the user's program (``command``) as a subprocess with, in its environment:

    OPENAI_BASE_URL      http://127.0.0.1:<port>/rollouts/<id>/v1   (the policy, attributed)
    OPENAI_API_KEY       the rollout's own token (not the run's): it serves this rollout's routes
                         only, and is the only token its reward is taken with
    AGENTRL_ROLLOUT_TOKEN  the same token
    AGENTRL_ROLLOUT_ID   <id>
    AGENTRL_TASK         the task as JSON: id, prompt, answer, meta, system (the task source's
                         system prompt), max_turns
    AGENTRL_REWARD_URL   http://127.0.0.1:<port>/rollouts/<id>/reward  (POST {"reward": r},
                         once, r finite in [gateway.min_reward, gateway.max_reward])

Every chat completion is recorded token-exactly by the gateway (see ``agentrl/gateway``); when
the program exits, its calls become trajectories (consecutive calls that extend each other merge
into one sequence). The reward is what the program reported, else ``reward_fn(task, record)``
when configured; a rollout that timed out, crashed, made no model call or has no reward is
marked failed and counted (``gateway/*`` metrics), never fatal. Subprocesses are killed (their
whole process group) on every exit path.

``entry_point`` (``module:function``) instead runs ``function(task, base_url, api_key) ->
reward`` in a pool of ``workers`` long-lived processes that import the agent once and serve many
rollouts, each with the same environment, token, timeout and failure accounting
(``agentrl/envs/external/workers.py``).

Tasks, the warm start's demonstrations and the system prompt come from a task source suite
(``tasks``, e.g. toolcalc): ``tasks``, ``make``, ``oracle`` and ``verify`` are delegated to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from agentrl import stopping
from agentrl.gateway.record import RolloutRecord, trajectories
from agentrl.gateway.server import Gateway
from agentrl.protocols import Runner
from agentrl.rollout.engine import SamplingParams
from agentrl.types import Task, Trajectory

log = logging.getLogger(__name__)

_ENTRY_POINT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class ExternalAgent:
    """The env suite of ``conf/env/external.yaml``.

    command: the agent program (a string, split like a shell would; a leading ``python`` or
        ``python3`` is this interpreter, so the program runs in the same environment); not used
        when ``entry_point`` is set.
    tasks: the task source suite (built from its own ``_target_``).
    gateway: a partial ``Gateway`` (given the engine and tokenizer at run time).
    timeout_s: a rollout's program is killed after this many seconds (counted).
    max_concurrency: programs running at once.
    reward_fn: optional ``(task, record) -> float`` scoring the recorded conversation of a
        rollout whose program reported no reward.
    cwd: the working directory of the programs (null: this process's).
    entry_point: ``module:function`` run in a pool of long-lived workers instead of ``command``
        (imported from ``cwd``; one that does not import is a ValueError, raised here).
    workers: the pool's processes (rollouts running at once) in entry-point mode.
    """

    name = "external"

    def __init__(
        self,
        command: str,
        tasks,
        gateway,
        timeout_s: float = 60.0,
        max_concurrency: int = 8,
        reward_fn=None,
        cwd: str | None = None,
        entry_point: str | None = None,
        workers: int = 8,
    ):
        if entry_point is None and (not command or not str(command).strip()):
            raise ValueError("env.command must name the agent program to run, got nothing")
        if entry_point is not None and not _ENTRY_POINT.fullmatch(str(entry_point)):
            raise ValueError(
                "env.entry_point must be 'module:function' (e.g. examples.openai_agent.agent:run),"
                f" got {entry_point!r}"
            )
        if workers < 1:
            raise ValueError(f"env.workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"env.timeout_s must be > 0, got {timeout_s}")
        if max_concurrency < 1:
            raise ValueError(f"env.max_concurrency must be >= 1, got {max_concurrency}")
        if gateway is not None:
            gateway(engine=None, tokenizer=None)  # its settings are checked now, before compute
        argv = shlex.split(str(command or ""))
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        self.argv = argv
        self.source = tasks
        self.gateway_factory = gateway
        self.timeout_s = float(timeout_s)
        self.max_concurrency = int(max_concurrency)
        self.reward_fn = reward_fn
        self.cwd = cwd
        self.system_prompt = getattr(tasks, "system_prompt", None)
        self.max_turns = tasks.max_turns
        self.max_action_tokens = tasks.max_action_tokens
        self.stop_strings = list(tasks.stop_strings)
        self.pool = None
        if entry_point is not None:  # last: nothing after it can fail and leave it running
            from agentrl.envs.external.workers import WorkerPool

            self.pool = WorkerPool(str(entry_point), int(workers), cwd, self.timeout_s)
            self.pool.start()

    def close(self) -> None:
        """End the entry point's workers (the trainer calls this on every exit path)."""
        if self.pool is not None:
            self.pool.close()

    def tasks(self, split: str) -> list[Task]:
        return self.source.tasks(split)

    def make(self):
        return self.source.make()

    def oracle(self, task: Task, rng):
        return self.source.oracle(task, rng)

    def verify(self, task: Task, env) -> bool:
        return self.source.verify(task, env)

    def make_runner(self, engine, chat, max_seq_len: int) -> ExternalRunner:
        """The module's hook: this suite produces its trajectories itself, through the gateway."""
        return ExternalRunner(self, engine, chat, max_seq_len)


class _Proc:
    def __init__(self, index: int, record: RolloutRecord, group: int, popen, log_path: Path):
        self.index, self.record, self.group = index, record, group
        self.popen, self.log_path = popen, log_path
        self.started = time.monotonic()
        self.outcome: str | None = None

    def crash(self) -> str | None:
        """Why the program failed (it exited with an error), else None."""
        code = self.popen.returncode
        return None if code == 0 else f"agent: exited with code {code}: {_tail(self.log_path)}"


def kill_group(popen: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group (it was started in a session of its own, so
    this reaches anything it spawned that stayed in the group), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    try:
        popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("agent process %d did not exit after SIGKILL", popen.pid)


class ExternalRunner(Runner):
    """Runs one agent program per task (repeat a task to sample a GRPO group) against a gateway
    that lives for the duration of ``run``. A ``Runner`` as ``EpisodeRunner`` is, with the same
    ``sampling`` (the gateway applies its temperature, top_p and greedy to every request)."""

    namespace = "gateway"

    # the gateway's refusals (Gateway.COUNTERS but its request count): 400s, 401s, 403s, 413s,
    # refused rewards, 409s
    GATEWAY_COUNTERS = tuple(k for k in Gateway.COUNTERS if k != "requests")
    COUNTERS = ("timeouts", "crashes", "missing_rewards", "no_calls", "rollouts", *GATEWAY_COUNTERS)

    def __init__(self, suite: ExternalAgent, engine, chat, max_seq_len: int):
        self.suite = suite
        self.engine = engine
        self.chat = chat
        self.max_seq_len = max_seq_len
        self.totals = dict.fromkeys(self.COUNTERS, 0)
        self.last: dict[str, float] = {}
        self.gateway: Gateway | None = None
        # the overlap pipeline's event (agentrl/pipeline.py): set, its rollout is abandoned
        self.cancel = None

    def metrics(self) -> dict[str, float]:
        """The last run's counts and rates, and the totals since the start (``gateway/``)."""
        out = {f"gateway/{k}": float(v) for k, v in self.last.items()}
        out.update({f"gateway/{k}_total": float(v) for k, v in self.totals.items()})
        return out

    def run(
        self,
        tasks: list[Task],
        groups: list[int],
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> list[Trajectory]:
        gw = self.suite.gateway_factory(
            engine=self.engine,
            tokenizer=self.chat.tokenizer,
            max_tokens=params.max_new_tokens,
            max_seq_len=self.max_seq_len,
        )
        gw.sampling = params
        gw.generator_fn = self._generators(generator)
        self.gateway = gw
        if self.suite.pool is not None:
            with gw:
                jobs = [self._job(gw, i, t, g) for i, (t, g) in enumerate(zip(tasks, groups))]
                if self.suite.pool.run(gw, jobs, stop=self._stopped):
                    return self._abandon(jobs, len(tasks))
                return self._collect(jobs, gw)
        procs: list[_Proc] = []
        with tempfile.TemporaryDirectory(prefix="agentrl-agents-") as tmp, gw:
            try:
                cut = self._loop(gw, tasks, groups, procs, Path(tmp))
            finally:
                for p in procs:
                    kill_group(p.popen)
            if cut:
                return self._abandon(procs, len(tasks))
            return self._collect(procs, gw)

    def _stopped(self) -> bool:
        """A stop signal, or the overlap pipeline's cancel: the rollout is abandoned, as the
        episode runner abandons its episodes between turns."""
        return stopping.requested() or (self.cancel is not None and self.cancel.is_set())

    def _abandon(self, started: list, total: int) -> list[Trajectory]:
        """No trajectories from a rollout cut short (its step is redone on resume, or its batch
        dropped): nothing is counted, the gateway fails what its programs left queued."""
        log.info(
            "env=external: rollout abandoned by a stop: %d agent programs killed, %d not started",
            sum(p.outcome == "abandoned" for p in started),
            total - sum(p.outcome is not None for p in started),
        )
        return []

    def _generators(self, generator: torch.Generator | None):
        """A generator per (rollout, call), seeded from the run's: independent of arrival order."""
        if generator is None:
            return None
        base = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        device = generator.device

        def make(rollout_id: str, call: int) -> torch.Generator:
            g = torch.Generator(device=device)
            g.manual_seed(hash((base, int(rollout_id.rsplit("-", 1)[-1]), call)) % (2**63))
            return g

        return make

    def _loop(self, gw: Gateway, tasks, groups, procs: list[_Proc], tmp: Path) -> bool:
        todo = list(enumerate(zip(tasks, groups)))
        running: list[_Proc] = []
        while todo or running:
            if self._stopped():  # checked every 20 ms; the caller kills the programs
                for p in running:
                    p.outcome = "abandoned"
                return True
            while todo and len(running) < self.suite.max_concurrency:
                i, (task, group) = todo.pop(0)
                p = self._spawn(gw, i, task, group, tmp)
                procs.append(p)
                running.append(p)
            # a batch once every running program waits for the policy (or the window passed);
            # a program's exit is polled every 20 ms
            due = gw.pump_due(len(running))
            if due != 0.0:
                select.select([gw.fileno()], [], [], 0.02 if due is None else min(due, 0.02))
            now = time.monotonic()
            for p in list(running):
                if p.popen.poll() is not None:
                    p.outcome = "exited"
                elif now - p.started > self.suite.timeout_s:
                    kill_group(p.popen)
                    p.outcome = "timeout"
                else:
                    continue
                running.remove(p)
        while gw.pump(0.0):  # answer anything a killed program left queued
            pass
        return False

    def _open(self, gw: Gateway, index: int, task: Task) -> tuple[RolloutRecord, dict, dict]:
        """The rollout's record, its task as the agent sees it, and its environment variables."""
        rid = f"rollout-{index}"
        record = gw.open_rollout(rid, task)
        payload = json.loads(
            json.dumps(
                {
                    **asdict(task),
                    "system": self.suite.system_prompt,
                    "max_turns": self.suite.max_turns,
                },
                default=str,
            )
        )
        env = {
            "OPENAI_BASE_URL": gw.rollout_url(rid),
            "OPENAI_API_KEY": record.token,
            "AGENTRL_ROLLOUT_TOKEN": record.token,
            "AGENTRL_ROLLOUT_ID": rid,
            "AGENTRL_TASK": json.dumps(payload),
            "AGENTRL_REWARD_URL": f"{gw.url}/rollouts/{rid}/reward",
        }
        return record, payload, env

    def _job(self, gw: Gateway, index: int, task: Task, group: int):
        from agentrl.envs.external.workers import Job

        record, payload, env = self._open(gw, index, task)
        message = {
            "id": record.id,
            "task": payload,
            "base_url": env["OPENAI_BASE_URL"],
            "api_key": record.token,
            "env": env,
        }
        return Job(index, record, group, message)

    def _spawn(self, gw: Gateway, index: int, task: Task, group: int, tmp: Path) -> _Proc:
        record, _, extra = self._open(gw, index, task)
        rid = record.id
        env = {**os.environ, **extra}
        log_path = tmp / f"{rid}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                self.suite.argv,
                env=env,
                cwd=self.suite.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return _Proc(index, record, group, popen, log_path)

    def _collect(self, procs: list[_Proc], gw: Gateway) -> list[Trajectory]:
        counts = dict.fromkeys(self.COUNTERS, 0)
        out: list[Trajectory] = []
        for p in sorted(procs, key=lambda q: q.index):
            gw.close_rollout(p.record.id)
            status, error = self._judge(p, counts)
            out.extend(trajectories(p.record, p.group, self.chat.tokenizer, status, error))
        counts["rollouts"] = len(procs)
        for k in self.GATEWAY_COUNTERS:
            counts[k] = gw.counters[k]
        for k, v in counts.items():
            self.totals[k] += v
        self.last = dict(counts)
        n = max(len(procs), 1)
        self.last["segments_per_rollout"] = len(out) / n
        self.last["calls_per_rollout"] = sum(len(p.record.calls) for p in procs) / n
        return out

    def _judge(self, p: _Proc, counts: dict) -> tuple[str, str | None]:
        """The rollout's status and error, its reward filled; counts what went wrong."""
        rec = p.record
        if p.outcome == "timeout":
            counts["timeouts"] += 1
            return "failed", f"agent: timed out after {self.suite.timeout_s:g}s"
        crash = p.crash()
        if crash is not None:
            counts["crashes"] += 1
            return "failed", crash
        if not rec.calls:
            counts["no_calls"] += 1
            return "failed", "agent: made no model call" + rec.refusals()
        if rec.reward is None and self.suite.reward_fn is not None:
            try:
                rec.reward = float(self.suite.reward_fn(rec.task, rec))
            except Exception as exc:
                log.warning("reward_fn failed on %s: %r", rec.task.id, exc)
        if rec.reward is None:
            counts["missing_rewards"] += 1
            return "failed", "agent: reported no reward"
        if rec.success is None:
            rec.success = rec.reward > 0
        return "ok", None


def _tail(path: Path, n: int = 300) -> str:
    """The last ``n`` characters of an agent's log, on one line (both runner modes)."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text[-n:].replace("\n", " | ")
