"""``env=external``'s entry-point mode: rollouts served by a pool of long-lived worker processes.

``env.entry_point: package.module:function`` names ``function(task, base_url, api_key) -> reward``.
Each of ``env.workers`` processes (``agent_worker.py``, started in ``env.cwd``) imports the module
once, when the env is built (an entry point that does not import is one clear error before any
model is loaded), then runs one rollout at a time for the whole run:

    task       the same dict a subprocess gets as AGENTRL_TASK: the task's id, prompt, answer,
               meta, plus system (the task source's system prompt) and max_turns; plain JSON data
    base_url   http://127.0.0.1:<port>/rollouts/<id>/v1   (the policy, attributed to the rollout)
    api_key    the rollout's own token
    returns    the reward (a number), or None when the function posted it to AGENTRL_REWARD_URL
               itself (or ``env.reward_fn`` is to score the conversation)

Before each call the worker's ``os.environ`` gets the rollout's OPENAI_BASE_URL, OPENAI_API_KEY,
AGENTRL_ROLLOUT_ID, AGENTRL_ROLLOUT_TOKEN, AGENTRL_TASK and AGENTRL_REWARD_URL, as a subprocess
would. A returned reward goes through the gateway's reward route's own checks (a finite number in
[min_reward, max_reward], once: one already posted is kept and the returned one counted as
``gateway/duplicate_rewards``).

Failures fail their rollout only, recorded and counted as a subprocess's would be: an exception in
the function (``crashes``; the error is the traceback's last line and where it was raised, the
worker goes on), a worker that dies (``crashes``; replaced), a rollout past ``env.timeout_s``
(``timeouts``; its worker's whole process group is killed and a fresh worker started). The pool
is closed (workers' input closed, then their process groups killed) by ``ExternalAgent.close``,
which the trainer calls on every exit path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from agentrl.envs.external.suite import _tail, kill_group
from agentrl.gateway.handler import HTTPError
from agentrl.gateway.record import RolloutRecord

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("agent_worker.py")


@dataclass
class Job:
    """One rollout served by a worker; judged like a subprocess's (``ExternalRunner._judge``)."""

    index: int
    record: RolloutRecord
    group: int
    # what the worker is sent: id, task, base_url, api_key, env
    message: dict
    # "exited" once the worker answered (or the rollout failed before it ran), "timeout", or
    # "abandoned" (its worker killed by a stop)
    outcome: str | None = None
    # why it failed, when it did other than by timing out
    failure: str | None = None

    def crash(self) -> str | None:
        return self.failure


class _Worker:
    def __init__(self, popen: subprocess.Popen, log_path: Path):
        self.popen, self.log_path = popen, log_path
        self.fd = popen.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.loaded = False
        # its input is closed (it died while idle): it gets no job, and is replaced
        self.dead = False
        self.job: Job | None = None
        # when it was started, or was sent its job
        self.since = time.monotonic()

    def send(self, job: Job) -> None:
        self.job, self.since = job, time.monotonic()
        self.popen.stdin.write((json.dumps(job.message, default=str) + "\n").encode())
        self.popen.stdin.flush()

    def read(self) -> list[dict] | None:
        """The messages that arrived; None once its output ended (the worker is gone)."""
        eof = False
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        msgs = [json.loads(line) for line in lines if line.strip()]
        return None if eof and not msgs else msgs

    def exit_reason(self) -> str:
        try:
            code = self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = "unknown"
        return f"exited with code {code}: {_tail(self.log_path)}"


class WorkerPool:
    """``size`` workers serving ``entry_point``; ``start`` before use, ``close`` after."""

    def __init__(self, entry_point: str, size: int, cwd: str | None, timeout_s: float):
        self.entry_point, self.size, self.cwd, self.timeout_s = entry_point, size, cwd, timeout_s
        self.workers: list[_Worker] = []  # mutated in place: the finalizer holds this list
        self.broken: str | None = None
        self._tmp = tempfile.mkdtemp(prefix="agentrl-workers-")
        self._spawned = 0
        self._close = weakref.finalize(self, _shutdown, self.workers, self._tmp)

    def pids(self) -> list[int]:
        return [w.popen.pid for w in self.workers]

    def start(self) -> None:
        """Start the workers and wait until every one has imported the entry point; one that
        cannot is a ValueError naming why (the pool is then closed)."""
        while len(self.workers) < self.size:
            self._spawn()
        deadline = time.monotonic() + self.timeout_s
        while not all(w.loaded for w in self.workers):
            problem = None
            for w, msg in self._events(0.05):
                if msg is not None and msg.get("ready"):
                    w.loaded = True
                else:
                    problem = msg["fatal"] if msg else f"its worker {w.exit_reason()}"
            if problem is None and time.monotonic() > deadline:
                problem = f"its workers did not import it in {self.timeout_s:g}s (env.timeout_s)"
            if problem is not None:
                self.close()
                raise ValueError(f"env.entry_point {self.entry_point!r} does not load: {problem}")

    def close(self) -> None:
        self._close()

    def run(self, gw, jobs: list[Job], stop=None) -> bool:
        """Serve every job (the gateway pumped meanwhile); each ends with its ``outcome``.
        ``stop()`` true (a stop signal, or the overlap pipeline abandoning its rollout) ends the
        run at once: the jobs not sent are dropped, the workers running one are killed (the next
        run starts fresh ones). Returns whether the run was cut short so."""
        self.broken = None
        while len(self.workers) < self.size:  # top up what failed or was stopped in a former run
            self._spawn()
        todo = deque(jobs)
        while todo or any(w.job for w in self.workers):
            if stop is not None and stop():
                for w in [w for w in self.workers if w.job is not None]:
                    w.job.outcome = "abandoned"
                    self._discard(w)
                return True
            for w in self.workers:
                if todo and w.loaded and not w.dead and w.job is None:
                    self._send(w, todo)
            if todo and not self.workers:
                for job in todo:
                    job.outcome, job.failure = (
                        "exited",
                        f"agent: no worker could start: {self.broken}",
                    )
                todo.clear()
            # a batch once every running rollout waits for the policy (or the window passed);
            # meanwhile wait for a request or a worker's message, never a fixed sleep
            due = gw.pump_due(sum(w.job is not None for w in self.workers))
            wait = min(self._next_expiry(), 1.0 if due is None else due)
            for w, msg in self._events(wait, gw.fileno()):
                self._handle(gw, w, msg)
            self._expire()
        while gw.pump(0.0):  # answer anything a killed worker left queued
            pass
        return False

    # ----------------------------------------------------------------- internals
    def _send(self, w: _Worker, todo: deque) -> None:
        job = todo.popleft()
        try:
            w.send(job)
        except OSError:  # it died while idle: its end of output is seen next, and it is replaced
            w.job, w.dead = None, True
            todo.appendleft(job)

    def _spawn(self) -> _Worker:
        log_path = Path(self._tmp) / f"worker-{self._spawned}.log"
        self._spawned += 1
        with open(log_path, "wb") as err:
            popen = subprocess.Popen(
                [sys.executable, "-u", str(WORKER), self.entry_point],
                cwd=self.cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        w = _Worker(popen, log_path)
        self.workers.append(w)
        return w

    def _events(self, wait: float, *extra: int) -> list[tuple[_Worker, dict | None]]:
        """(worker, message) for each message that arrived, (worker, None) for a worker gone;
        waits up to ``wait`` seconds for one, or for one of the ``extra`` files to be readable."""
        if not self.workers and not extra:
            return []
        fds = [w.fd for w in self.workers] + list(extra)
        readable, _, _ = select.select(fds, [], [], max(wait, 0.0))
        out: list[tuple[_Worker, dict | None]] = []
        for w in [w for w in self.workers if w.fd in readable]:
            msgs = w.read()
            out.extend([(w, None)] if msgs is None else [(w, m) for m in msgs])
        return out

    def _handle(self, gw, w: _Worker, msg: dict | None) -> None:
        if msg is not None and msg.get("ready"):
            w.loaded = True
        elif msg is not None and "id" in msg and w.job is not None:
            self._result(gw, w.job, msg)
            w.job = None
        elif w in self.workers:  # gone, or could not import the entry point again
            why = msg["fatal"] if msg else w.exit_reason()
            if w.job is not None:
                w.job.outcome, w.job.failure = "exited", f"agent: worker {why}"
            self._replace(w, why)

    def _result(self, gw, job: Job, msg: dict) -> None:
        job.outcome = "exited"
        if "error" in msg:
            job.failure = f"agent: raised {msg['error']}"
        elif "bad_reward" in msg:
            gw.count("bad_rewards")
            job.failure = f"agent: returned {msg['bad_reward']}, not a reward (a number or None)"
        elif msg.get("reward") is not None:
            try:  # the reward route's own checks and counters
                gw.report(job.record, {"reward": msg["reward"]})
            except HTTPError as exc:
                if exc.status != 409:  # 409: the reward it posted itself stands
                    job.failure = f"agent: returned reward refused: {exc.message}"

    def _next_expiry(self) -> float:
        """Seconds until the first running rollout (or loading worker) runs out of time."""
        now = time.monotonic()
        ends = [w.since + self.timeout_s - now for w in self.workers if w.job or not w.loaded]
        return max(min(ends, default=self.timeout_s), 0.0)

    def _expire(self) -> None:
        now = time.monotonic()
        for w in list(self.workers):
            if w.job is not None and now - w.since > self.timeout_s:
                w.job.outcome = "timeout"
                self._replace(w, f"rollout {w.job.record.id} timed out")
            elif not w.loaded and now - w.since > self.timeout_s:
                self._replace(w, f"did not import the entry point in {self.timeout_s:g}s")

    def _discard(self, w: _Worker) -> None:
        """Kill ``w`` (its process group) and drop it from the pool."""
        kill_group(w.popen)
        _close_pipes(w)
        self.workers.remove(w)

    def _replace(self, w: _Worker, why: str) -> None:
        """Kill ``w`` (its process group) and start a fresh worker, unless a fresh one already
        failed to start in this run."""
        self._discard(w)
        if not w.loaded:
            self.broken = why
        if self.broken is None:
            log.warning("agent worker %d replaced: %s", w.popen.pid, why)
            self._spawn()
        else:
            log.warning("agent worker %d gone, not replaced: %s", w.popen.pid, self.broken)


def _close_pipes(w: _Worker) -> None:
    for f in (w.popen.stdin, w.popen.stdout):
        with contextlib.suppress(OSError):
            f.close()


def _shutdown(workers: list[_Worker], tmp: str) -> None:
    """End every worker: its input closed (it exits), then its process group killed (whatever
    it left running, and a worker that did not exit in 2 s)."""
    for w in workers:
        with contextlib.suppress(OSError):
            w.popen.stdin.close()
    deadline = time.monotonic() + 2.0
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.popen.wait(timeout=max(deadline - time.monotonic(), 0.01))
        kill_group(w.popen)
        _close_pipes(w)
    workers.clear()
    shutil.rmtree(tmp, ignore_errors=True)
