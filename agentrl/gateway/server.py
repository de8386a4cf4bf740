"""An OpenAI-compatible HTTP endpoint that serves the current policy through the rollout engine.

Routes (``/rollouts/<id>`` in front attributes a request to a rollout; so does the
``X-AgentRL-Rollout`` header):

    GET  /v1/models                       the one model served
    POST /v1/chat/completions             messages, tools, temperature, top_p, max_tokens, stop,
                                          logprobs, stream (server-sent events)
    POST /v1/responses                    the Responses API, converted to a chat completion
                                          (responses.py); the same generation and record
    POST /rollouts/<id>/reward            {"reward": float, "success": bool (optional)}; only on
                                          the rollout's own path with its own token, once


Threads: HTTP requests are parsed on the server's threads and queued; ``pump`` (called by the
thread that owns the engine, the training thread) renders and tokenizes them, generates them in
batches of up to ``max_batch_size`` (requests with the same sampling settings together), records
them and wakes the waiting request threads. Neither the engine nor the tokenizer is touched from
any other thread. ``serve_in_thread`` runs ``pump`` on a thread of its own for standalone use.
A runner that knows how many rollouts it is running calls ``pump_due`` instead: a batch goes as
soon as each of them has its request queued (a turn of all of them in one engine call, as the
in-process env does), and ``fileno`` lets it wait for requests and its own processes at once.

Streaming (``stream: true``, both APIs): an engine whose ``generate`` takes ``on_token`` (the HF
engine) reports each token as its decoding loop samples it; the engine thread decodes it into the
request's text (streaming.py) and queues the delta for the request's HTTP thread, which sends it
at once. An engine without it (vLLM's offline ``LLM.generate``) returns whole turns: their tokens
then go through the same decoding once the turn is done (a replay). Either way the record is the
same as without streaming, and a client that goes away mid-stream changes nothing but its own
answer: the engine thread never writes to a connection.

Security: the server binds only to a loopback address unless ``allow_remote`` is set, answers
only loopback peers unless ``allow_remote`` (403), and requires ``Authorization: Bearer <token>``
on every route (401 otherwise): the run's token (random unless given; every route, but no reward)
or an open rollout's own token (``RolloutRecord.token``, random, given to that rollout's program:
that rollout's routes only, 403 on another's; a reward is taken only with it). The peer and the
token are checked before the body is read; a body is read only up to ``max_body_bytes`` (413).
Tokens are never logged.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import math
import os
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import ThreadingHTTPServer
from typing import Any

import torch

from agentrl.gateway import responses
from agentrl.gateway.handler import Handler, HTTPError, is_loopback
from agentrl.gateway.record import CallRecord, RolloutRecord
from agentrl.gateway.streaming import Stream, TextStream
from agentrl.gateway.toolcalls import TagFormat
from agentrl.rollout.engine import SamplingParams

log = logging.getLogger(__name__)


def _handle_error(self, request, client_address) -> None:
    """What escapes a request handler: one log line, not a traceback on stderr."""
    exc = sys.exc_info()[1]
    log.warning("gateway: a connection from %s failed: %r", client_address[0], exc)


@dataclass
class _Pending:
    """A queued completion request; ``done`` is set once ``result`` or ``error`` is filled."""

    body: dict
    rollout: RolloutRecord | None
    done: threading.Event
    result: dict | None = None
    error: HTTPError | None = None
    prompt_ids: list[int] | None = None
    params: SamplingParams | None = None
    tools: list | None = None
    # streamed requests: the events the HTTP thread reads, the text decoded so far
    stream: Stream | None = None
    text: TextStream | None = None
    # the answer's id ("chatcmpl-<n>") and creation time, given when its generation starts
    number: int = 0
    created: int = 0
    # when it was queued (time.monotonic): its batch window starts then
    queued_at: float = field(default_factory=time.monotonic)

    def fail(self, error: HTTPError) -> None:
        self.error = error
        self.done.set()
        if self.stream is not None:
            self.stream.put("error", error)


class Gateway:
    """engine: a RolloutEngine (``generate(prompts, params, generator)``), already bound;
    tokenizer: the policy's (its chat template renders the messages).

    tool_format: TagFormat / HermesFormat (see toolcalls.py).
    max_tokens: the most tokens one completion may generate (a request may ask for fewer).
    max_seq_len: a prompt that leaves no room under this is refused (400, context length).
    max_batch_size: completions generated in one engine call (1 = one at a time, each with its own
        seeded generator: results then do not depend on arrival order).
    batch_window_s: how long the oldest queued request waits for others to batch with, counted
        from when it was queued or the engine last finished a batch, whichever is later (a
        runner that knows how many requests can come, ``pump_due``, stops waiting once they are).
    request_timeout_s: a request not served by then gets 503.
    max_body_bytes: a request body over this is refused unread (413).
    min_reward, max_reward: a reported reward outside this (finite) range is refused (400, counted
        as ``bad_rewards``).
    """

    model_name = "agentrl-policy"
    COUNTERS = (
        "requests",
        "bad_requests",
        "unauthorized",
        "forbidden",
        "too_large",
        "bad_rewards",
        "duplicate_rewards",
        "unknown_routes",
    )

    def __init__(
        self,
        engine,
        tokenizer,
        tool_format=None,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        allow_remote: bool = False,
        max_tokens: int = 256,
        max_seq_len: int = 2048,
        max_batch_size: int = 1,
        batch_window_s: float = 0.01,
        request_timeout_s: float = 300.0,
        max_body_bytes: int = 8 * 2**20,
        min_reward: float = -1000.0,
        max_reward: float = 1000.0,
    ):
        if not allow_remote and not is_loopback(host):
            raise ValueError(
                f"gateway host {host!r} is not a loopback address: the policy would be exposed "
                "to the network; set allow_remote=true to do that on purpose"
            )
        if max_batch_size < 1:
            raise ValueError(f"gateway max_batch_size must be >= 1, got {max_batch_size}")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise ValueError(f"gateway max_body_bytes must be an integer, got {max_body_bytes!r}")
        if max_body_bytes < 1:
            raise ValueError(f"gateway max_body_bytes must be >= 1, got {max_body_bytes}")
        if not (
            math.isfinite(min_reward) and math.isfinite(max_reward) and min_reward <= max_reward
        ):
            raise ValueError(
                "gateway min_reward and max_reward must be finite with min_reward <= max_reward, "
                f"got {min_reward!r} and {max_reward!r}"
            )
        self.engine = engine
        self.tokenizer = tokenizer
        self.tool_format = tool_format or TagFormat()
        self.host, self.port = host, port
        self.token = token or secrets.token_urlsafe(24)
        self.allow_remote = allow_remote
        self.max_tokens = max_tokens
        self.max_seq_len = max_seq_len
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.request_timeout_s = request_timeout_s
        self.max_body_bytes = max_body_bytes
        self.min_reward, self.max_reward = float(min_reward), float(max_reward)
        # sampling the run imposes (temperature, top_p, greedy); None honours each request's
        self.sampling: SamplingParams | None = None
        # (rollout id, call index) -> a torch.Generator, or None for the engine's default
        self.generator_fn: Callable[[str, int], torch.Generator | None] | None = None
        self.rollouts: dict[str, RolloutRecord] = {}
        # requests: completions asked; the others count refusals: bad_requests (400s),
        # unauthorized (401), forbidden (403: a non-local peer, another rollout's token, a reward
        # without the rollout's token), too_large (413), bad_rewards (a reward refused as not a
        # finite number in [min_reward, max_reward]), duplicate_rewards (409: a second reward),
        # unknown_routes (404: a method and path the gateway does not serve)
        self.counters = dict.fromkeys(self.COUNTERS, 0)
        # Responses API: the responses of requests attributed to no rollout (a rollout's are in
        # its record), for previous_response_id; the last responses.MAX_UNATTRIBUTED
        self.responses: dict[str, list[dict]] = {}
        self._lock = threading.Lock()
        # the queued requests, oldest first; ``_arrived`` is notified on each, and a byte is
        # written to ``_wake`` (a pipe: ``fileno`` lets a runner select on it with its own files)
        self._queue: deque[_Pending] = deque()
        self._arrived = threading.Condition()
        self._wake: tuple[int, int] | None = None
        # when the engine last finished a batch: a request queued while it was busy could not
        # have been served sooner, so its batch window starts then
        self._idle_since = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._ids = 0

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Gateway:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type(
            "_Server",
            (ThreadingHTTPServer,),
            # the listen backlog: every rollout of a step may connect at once (socketserver's
            # default of 5 drops the others' connections for a second or more)
            {
                "address_family": family,
                "handle_error": _handle_error,
                "request_queue_size": socket.SOMAXCONN,
            },
        )
        self._server = server_cls((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._server.gateway = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        self._stop.clear()
        t = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="gateway-http", daemon=True
        )
        t.start()
        self._threads.append(t)
        return self

    def serve_in_thread(self) -> Gateway:
        """Run ``pump`` on its own thread (standalone serving: nothing else uses the engine)."""
        t = threading.Thread(target=self._pump_forever, name="gateway-engine", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _pump_forever(self) -> None:
        while not self._stop.is_set():
            self.pump(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        with self._arrived:  # anything still queued is answered, never left hanging
            left, self._queue = list(self._queue), deque()
        for p in left:
            p.fail(HTTPError(503, "the gateway is shutting down", "server_error"))
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- rollouts
    def open_rollout(self, rollout_id: str, task) -> RolloutRecord:
        """A rollout's record, with its own token (``rec.token``: give it to its program)."""
        rec = RolloutRecord(rollout_id, task)
        with self._lock:
            self.rollouts[rollout_id] = rec
        return rec

    def close_rollout(self, rollout_id: str) -> RolloutRecord:
        """The record, no longer served: its token stops working."""
        with self._lock:
            return self.rollouts.pop(rollout_id)

    def rollout_url(self, rollout_id: str) -> str:
        return f"{self.url}/rollouts/{rollout_id}/v1"

    # ----------------------------------------------------------------- HTTP side
    def count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def authenticate(self, header: str | None) -> RolloutRecord | bool | None:
        """Whose the bearer token of an ``Authorization`` header is: True for the run's token,
        the open rollout whose own token it is, else None. Compared in constant time."""
        if not header or not header.startswith("Bearer "):
            return None
        given = header[7:].strip().encode()
        owner: RolloutRecord | bool | None = None
        if hmac.compare_digest(given, self.token.encode()):
            owner = True
        with self._lock:
            open_now = list(self.rollouts.values())
        for rec in open_now:  # every one compared: the time does not tell which matched
            if hmac.compare_digest(given, rec.token.encode()) and owner is None:
                owner = rec
        return owner

    def authorized(self, header: str | None) -> bool:
        return self.authenticate(header) is not None

    def submit(self, body: dict, rollout: RolloutRecord | None) -> dict:
        """Queue one completion and wait for it (called on an HTTP thread)."""
        p = _Pending(body, rollout, threading.Event())
        self._enqueue(p)
        if not p.done.wait(self.request_timeout_s):
            raise HTTPError(503, "the policy did not answer in time", "server_error")
        if p.error is not None:
            raise p.error
        return p.result

    def stream(self, body: dict, rollout: RolloutRecord | None) -> Iterator[tuple]:
        """Queue one completion and read it as it is generated (called on an HTTP thread):
        ``("start", head)`` (head: the answer's ``id``, ``created``, ``model``), ``("text",
        delta, logprob entries)`` while it is generated, last ``("result", result)`` (the
        non-streamed answer). A refused request raises its HTTPError before ``start``."""
        p = _Pending(body, rollout, threading.Event(), stream=Stream())
        self._enqueue(p)
        return p.stream.read(self.request_timeout_s)

    def _enqueue(self, p: _Pending) -> None:
        with self._arrived:
            self._queue.append(p)
            self._arrived.notify()
            wake = self._wake
        if wake is not None:
            with contextlib.suppress(OSError):  # full (already readable) or closed by stop
                os.write(wake[1], b"\0")

    def create_response(self, body: dict, rollout: RolloutRecord | None) -> dict:
        """One Responses request (called on an HTTP thread), generated through ``submit`` like a
        chat one (responses.py)."""
        store, lock = (rollout.responses, rollout.lock) if rollout else (self.responses, self._lock)
        return responses.create(self.submit, body, rollout, store, lock)

    def stream_response(self, body: dict, rollout: RolloutRecord | None) -> Iterator[tuple]:
        """One streamed Responses request: its (event type, payload) as the text is generated,
        read through ``stream`` like a chat one."""
        store, lock = (rollout.responses, rollout.lock) if rollout else (self.responses, self._lock)
        return responses.stream(self.stream, body, rollout, store, lock)

    def report(self, rollout: RolloutRecord, body: dict) -> None:
        """Take the rollout's reward: a finite number in [min_reward, max_reward], once."""
        reward = body.get("reward")
        problem = None
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            problem = f"reward must be a number, got {reward!r}"
        elif not math.isfinite(reward) or not self.min_reward <= reward <= self.max_reward:
            problem = (
                f"reward must be a finite number in [{self.min_reward:g}, {self.max_reward:g}], "
                f"got {reward!r}"
            )
        if problem is not None:
            self.count("bad_rewards")
            raise HTTPError(400, problem)
        success = body.get("success")
        if success is not None and not isinstance(success, bool):
            raise HTTPError(400, f"success must be true or false, got {success!r}")
        with rollout.lock:
            if rollout.reward is not None:
                taken = rollout.reward
            else:
                taken = None
                rollout.reward = float(reward)
                rollout.success = success
        if taken is not None:
            self.count("duplicate_rewards")
            raise HTTPError(409, f"rollout {rollout.id!r} already reported its reward ({taken!r})")

    # ----------------------------------------------------------------- engine side
    def fileno(self) -> int:
        """A file that is readable once a request was queued since the last batch was taken
        (for a runner's ``select`` on its own files too); valid between ``start`` and ``stop``."""
        if self._wake is None:
            raise RuntimeError("the gateway is not started")
        return self._wake[0]

    def pump(self, timeout: float = 0.05) -> int:
        """Serve the queued completions (blocking up to ``timeout`` for the first one, then up to
        ``batch_window_s`` after it was queued for others); returns how many were served. Call
        it from the thread that owns the engine."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: self._queue, timeout):
                return 0
            deadline = self._window_end()
            while len(self._queue) < self.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0 or not self._arrived.wait(left):
                    break
            batch = self._take()
        self._serve(batch)
        return len(batch)

    def pump_due(self, expected: int) -> float | None:
        """Serve one batch if it is due, without waiting; for a runner that knows how many
        requests can still come: ``expected``, one per rollout it is running. Due: as many
        requests are queued as ``max_batch_size`` or ``expected`` (every running rollout is
        waiting for the policy, as the in-process env's episodes do), or the oldest has waited
        ``batch_window_s``. Returns 0.0 after serving a batch (call again), else the seconds
        until the queued requests are due, or None when nothing is queued (wait on ``fileno``).
        Call it from the thread that owns the engine."""
        with self._arrived:
            self._drain_wake()  # what is queued is read now: a later request writes again
            if not self._queue:
                return None
            want = min(self.max_batch_size, max(expected, 1))
            left = self._window_end() - time.monotonic()
            if len(self._queue) < want and left > 0:
                return left
            batch = self._take()
        self._serve(batch)
        return 0.0

    def _window_end(self) -> float:
        """When the oldest queued request stops waiting for others (``_arrived`` held)."""
        return max(self._queue[0].queued_at, self._idle_since) + self.batch_window_s

    def _take(self) -> list[_Pending]:
        """The oldest ``max_batch_size`` queued requests (``_arrived`` held)."""
        self._drain_wake()
        n = min(len(self._queue), self.max_batch_size)
        return [self._queue.popleft() for _ in range(n)]

    def _drain_wake(self) -> None:
        if self._wake is None:
            return
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake[0], 4096):
                pass

    def _serve(self, batch: list[_Pending]) -> None:
        """Render and tokenize each request, then generate them (same sampling settings
        together); a request that cannot be served gets its error."""
        ready = []
        for p in batch:
            try:
                self._prepare(p)
                ready.append(p)
            except HTTPError as exc:
                p.fail(exc)
            except Exception as exc:  # a template or tokenizer error on odd input
                p.fail(HTTPError(400, f"cannot render the messages: {type(exc).__name__}: {exc}"))
        while ready:
            params = ready[0].params
            same = [p for p in ready if p.params == params]
            ready = [p for p in ready if p.params != params]
            self._generate(same, params)
        self._idle_since = time.monotonic()

    def _generate(self, batch: list[_Pending], params: SamplingParams) -> None:
        indices = []
        for p in batch:  # the call index of each request inside its rollout, in serving order
            if p.rollout is None:
                indices.append(-1)
            else:
                indices.append(p.rollout.requests)
                p.rollout.requests += 1
        self._start(batch)
        gen = None
        if self.generator_fn is not None and batch[0].rollout is not None:
            gen = self.generator_fn(batch[0].rollout.id, indices[0])
        # the engine reports tokens as they are sampled (else streamed turns are replayed)
        live = any(p.text is not None for p in batch) and self.engine.streams_tokens
        kwargs = {"on_token": functools.partial(self._on_token, batch)} if live else {}
        try:
            outs = self.engine.generate([p.prompt_ids for p in batch], params, gen, **kwargs)
        except Exception as exc:
            log.warning("gateway: the engine failed: %r", exc)
            for p in batch:
                p.fail(HTTPError(500, f"generation failed: {type(exc).__name__}", "server_error"))
            return
        for j, (p, k, out) in enumerate(zip(batch, indices, outs)):
            if p.text is not None and not live:  # a whole turn: replayed token by token
                for i, lp in zip(out.token_ids, out.logprobs):
                    self._on_token(batch, j, i, lp)
            p.result = self._finish(p, k, out)
            p.done.set()
            if p.stream is not None:
                if p.text is not None:
                    p.text.finish(p.result["choices"][0]["message"]["content"])
                p.stream.put("result", p.result)

    def _start(self, batch: list[_Pending]) -> None:
        """Number the answers; a streamed request learns that its generation starts."""
        for p in batch:
            self._ids += 1
            p.number, p.created = self._ids, int(time.time())
            if p.stream is None:
                continue
            entry = self._logprob_entry if p.body.get("logprobs") else None
            openers = getattr(self.tool_format, "call_openers", None)
            p.text = TextStream(
                functools.partial(self.tokenizer.decode, skip_special_tokens=True),
                functools.partial(p.stream.put, "text"),
                openers(p.tools) if openers is not None else (None if p.tools else []),
                self.tokenizer.eos_token_id,
                entry,
            )
            head = {"id": f"chatcmpl-{p.number}", "created": p.created, "model": self.model_name}
            p.stream.put("start", head)

    def _on_token(self, batch: list[_Pending], i: int, token_id: int, logprob: float) -> None:
        """The engine sampled request ``i``'s next token (on the engine thread): stream it. A
        failure here stops that request's stream only, never the batch."""
        p = batch[i]
        if p.text is None:
            return
        try:
            p.text.push(token_id, logprob)
        except Exception as exc:
            log.warning("gateway: streaming a completion failed: %r", exc)
            p.text = None
            p.fail(HTTPError(500, f"streaming failed: {type(exc).__name__}", "server_error"))

    def _prepare(self, p: _Pending) -> None:
        body = p.body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPError(400, "messages must be a non-empty list")
        if any(not isinstance(m, dict) or "role" not in m for m in messages):
            raise HTTPError(400, "each message must be an object with a role")
        if body.get("n", 1) != 1:
            raise HTTPError(400, "only n=1 is supported")
        tools = body.get("tools") or None
        if tools is not None and not isinstance(tools, list):
            raise HTTPError(400, "tools must be a list")
        if body.get("tool_choice") == "none":
            tools = None
        p.tools = tools
        fmt = self.tool_format
        text = self.tokenizer.apply_chat_template(
            fmt.render(messages, tools),
            tokenize=False,
            add_generation_prompt=True,
            **fmt.template_kwargs(tools),
        )
        # the one tokenization of this call: the prompt ids the engine sees and the record holds
        p.prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = self.max_seq_len - len(p.prompt_ids)
        if room < 1:
            raise HTTPError(
                400,
                f"the prompt has {len(p.prompt_ids)} tokens; the context is {self.max_seq_len}",
            )
        p.params = self._params(body, tools, room)

    def _params(self, body: dict, tools, room: int) -> SamplingParams:
        want = body.get("max_completion_tokens")
        want = body.get("max_tokens") if want is None else want
        want = self.max_tokens if want is None else want
        if not isinstance(want, int) or want < 1:
            raise HTTPError(400, f"max_tokens must be a positive integer, got {want!r}")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise HTTPError(400, "stop must be a string or a list of non-empty strings")
        base = SamplingParams(
            max_new_tokens=min(want, self.max_tokens, room),
            stop_token_ids=[self.tokenizer.eos_token_id],
            stop_strings=stop + self.tool_format.stop_strings(tools),
        )
        if self.sampling is not None:
            # the run's sampling: the loss is computed with the same tempered log-probs
            return replace(
                base,
                temperature=self.sampling.temperature,
                top_p=self.sampling.top_p,
                greedy=self.sampling.greedy,
            )
        temperature = body.get("temperature", 1.0)
        top_p = body.get("top_p", 1.0)
        for name, v in (("temperature", temperature), ("top_p", top_p)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise HTTPError(400, f"{name} must be a number >= 0, got {v!r}")
        if not 0 < top_p <= 1:
            raise HTTPError(400, f"top_p must be in (0, 1], got {top_p!r}")
        return replace(
            base,
            temperature=float(temperature) or 1.0,
            top_p=float(top_p),
            greedy=temperature == 0,
        )

    def _finish(self, p: _Pending, k: int, out) -> dict:
        eos = self.tokenizer.eos_token_id
        ids = [i for i in out.token_ids if i != eos]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cid = f"chatcmpl-{p.number}"
        prefix = f"call_{p.rollout.id if p.rollout else 'x'}_{k if k >= 0 else p.number}"
        content, calls = self.tool_format.parse(text, p.tools, prefix)
        if p.rollout is not None:
            p.rollout.add(
                CallRecord(
                    list(p.prompt_ids),
                    list(out.token_ids),
                    list(out.logprobs),
                    out.finish,
                    text,
                    calls,
                    p.body["messages"],
                )
            )
        finish = "tool_calls" if calls else ("length" if out.finish == "length" else "stop")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        choice["logprobs"] = self._logprobs(out) if p.body.get("logprobs") else None
        return {
            "id": cid,
            "object": "chat.completion",
            "created": p.created,
            "model": self.model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(p.prompt_ids),
                "completion_tokens": len(out.token_ids),
                "total_tokens": len(p.prompt_ids) + len(out.token_ids),
            },
        }

    def _logprobs(self, out) -> dict:
        return {
            "content": [self._logprob_entry(i, lp) for i, lp in zip(out.token_ids, out.logprobs)]
        }

    def _logprob_entry(self, token_id: int, logprob: float) -> dict:
        tok = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return {"token": tok, "logprob": logprob, "bytes": list(tok.encode()), "top_logprobs": []}
