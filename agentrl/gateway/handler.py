"""The HTTP side of the gateway: routing, authentication, JSON and server-sent events.

Every request is answered here on the server's threads; completions are handed to
``Gateway.submit``, which queues them for the engine thread (see server.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import logging
import re
import socket
import time
from http.server import BaseHTTPRequestHandler

log = logging.getLogger(__name__)

# Content-Length: digits only (int() would also take "-1", "+5", "1_0", " 5")
_LENGTH = re.compile(r"[0-9]{1,19}")
# after an error that leaves a body unread, at most this much of it is discarded (and for at most
# _DRAIN_S) before the connection is closed, so the client reads the answer instead of a reset
_DRAIN_BYTES = 2**20
_DRAIN_S = 0.5


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _route(path: str) -> tuple[str | None, str]:
    """'/rollouts/<id>/v1/x' -> ('<id>', '/v1/x'); '/v1/x' -> (None, '/v1/x')."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.startswith("/rollouts/"):
        rest = path[len("/rollouts/") :]
        rid, _, tail = rest.partition("/")
        return rid, "/" + tail
    return None, path


# the counter each refused status adds to (besides the route's own counters)
_COUNTED = {400: "bad_requests", 401: "unauthorized", 403: "forbidden", 413: "too_large"}
# what a 404 for an unknown route lists
SUPPORTED = (
    "GET /v1/models, POST /v1/chat/completions, POST /v1/responses "
    "(also under /rollouts/<id>/v1), POST /rollouts/<id>/reward"
)


class Handler(BaseHTTPRequestHandler):
    """Order of the checks on every request: the peer (403), the token (401), the route and the
    rollout (403 for another rollout's token, 404), the body's length (400, 411, 413); only then
    is the body read (at most ``max_body_bytes``) and parsed (400). An error that leaves a body
    unread closes the connection, so the body is never taken for a next request: one response per
    request, always JSON."""

    protocol_version = "HTTP/1.1"
    server_version = "agentrl-gateway"
    _unread = False  # the request declared a body not read (yet)
    _answering = False  # its response has begun
    _rollout = None  # the rollout the request is attributed to, once known
    _what = ""  # "METHOD /route", for the rollout's record of refused requests

    def log_message(self, fmt, *args):  # the request line only; headers (the token) never
        log.debug("gateway %s: " + fmt, self.client_address[0], *args)

    @property
    def gateway(self):
        return self.server.gateway  # type: ignore[attr-defined]

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def handle_expect_100(self):
        """``Expect: 100-continue`` is answered in ``_body``, once the request may send it."""
        return True

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line or header, an unknown method) in
        the gateway's JSON shape; the connection is closed after them."""
        self.close_connection = True
        self.request_version = self.protocol_version  # no HTTP/0.9: a status line and headers
        short = self.responses.get(code, ("error",))[0]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._json(
                code, {"error": {"message": message or short, "type": "invalid_request_error"}}
            )

    def _dispatch(self, method: str) -> None:
        gw = self.gateway
        self._unread = self._declares_body()
        self._answering = False
        self._rollout = None
        self._what = f"{method} {_route(self.path)[1]}"
        try:
            if not gw.allow_remote and not is_loopback(self.client_address[0]):
                raise HTTPError(403, "only local connections are accepted", "permission_error")
            owner = gw.authenticate(self.headers.get("Authorization"))
            if owner is None:
                raise HTTPError(401, "missing or wrong bearer token", "authentication_error")
            rid, path = _route(self.path)
            header = self.headers.get("X-AgentRL-Rollout")
            if rid is not None and header is not None and header != rid:
                raise HTTPError(400, f"the path names rollout {rid!r}, the header {header!r}")
            rid = rid or header
            if owner is not True:  # a rollout's own token: that rollout's routes only
                if rid is not None and rid != owner.id:
                    raise HTTPError(403, f"this token is not rollout {rid!r}'s", "permission_error")
                rid = owner.id
            rollout = None
            if rid is not None:
                rollout = gw.rollouts.get(rid)
                if rollout is None:
                    raise HTTPError(404, f"no open rollout {rid!r}", "not_found_error")
            self._rollout = rollout
            if method == "GET" and path == "/v1/models":
                self._json(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": gw.model_name,
                                "object": "model",
                                "created": 0,
                                "owned_by": "agentrl",
                            }
                        ],
                    },
                )
            elif method == "POST" and path == "/v1/chat/completions":
                body = self._body()
                gw.count("requests")
                if body.get("stream"):
                    self._stream(gw.stream(body, rollout), body)
                else:
                    self._json(200, gw.submit(body, rollout))
            elif method == "POST" and path == "/v1/responses":
                body = self._body()
                gw.count("requests")
                if body.get("stream"):
                    self._events(gw.stream_response(body, rollout))
                else:
                    self._json(200, gw.create_response(body, rollout))
            elif method == "POST" and path == "/reward" and self.path.startswith("/rollouts/"):
                # only on the rollout's own path, with its own token (its program's)
                if owner is not rollout:
                    raise HTTPError(
                        403,
                        f"the reward of rollout {rid!r} is taken only with its own token",
                        "permission_error",
                    )
                gw.report(rollout, self._body())
                self._json(200, {"ok": True})
            else:
                gw.count("unknown_routes")
                raise HTTPError(
                    404,
                    f"the gateway does not serve {method} {path}; it serves {SUPPORTED}",
                    "not_found_error",
                )
        except HTTPError as exc:
            self._refuse(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug, not the client's doing: still one answer, no traceback
            log.warning("gateway: %s %s failed: %r", method, self.path.split("?")[0], exc)
            if self._answering:  # an answer was begun: cut it short rather than add a second
                self.close_connection = True
            else:
                self._refuse(
                    HTTPError(500, f"internal error: {type(exc).__name__}", "server_error")
                )

    def _refuse(self, exc: HTTPError) -> None:
        name = _COUNTED.get(exc.status)
        if name is not None:
            self.gateway.count(name)
        if self._rollout is not None:  # its program's failure names what it tried
            self._rollout.refuse(f"{self._what} ({exc.status})")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._json(exc.status, {"error": {"message": exc.message, "type": exc.kind}})

    def _declares_body(self) -> bool:
        length = self.headers.get_all("Content-Length") or []
        return "Transfer-Encoding" in self.headers or any(v.strip() != "0" for v in length)

    def _body(self) -> dict:
        """The JSON object of the body: read only now (the peer, token and route are checked) and
        only up to the gateway's max_body_bytes."""
        if "Transfer-Encoding" in self.headers:
            raise HTTPError(411, "send the body with a Content-Length (no Transfer-Encoding)")
        values = self.headers.get_all("Content-Length") or ["0"]
        if len(values) != 1 or not _LENGTH.fullmatch(values[0].strip()):
            raise HTTPError(400, "bad Content-Length: one non-negative integer is required")
        length = int(values[0].strip())
        cap = self.gateway.max_body_bytes
        if length > cap:
            raise HTTPError(413, f"request body of {length} bytes, over {cap}")
        if length and self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        raw = self.rfile.read(length) if length else b""
        self._unread = False
        if len(raw) < length:
            self.close_connection = True
            raise HTTPError(400, f"the body ended after {len(raw)} of {length} bytes")
        try:
            body = json.loads(raw or b"{}")
        except RecursionError as exc:
            raise HTTPError(
                400, "the body is not JSON the gateway takes: nested too deeply"
            ) from exc
        except ValueError as exc:
            raise HTTPError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    def _json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        # a body left unread would be taken for the next request: answer, then close
        close = self._unread or self.close_connection
        self._answering = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        if self._unread:
            self._drain()

    def _drain(self) -> None:
        """Half-close and discard (never keep) a bounded part of the unread body, so the client
        reads the answer before the connection goes; the rest is left to the close."""
        self._unread = False
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _DRAIN_S
            left = _DRAIN_BYTES
            while left > 0:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                self.connection.settimeout(wait)
                got = self.connection.recv(min(left, 65536))
                if not got:
                    break
                left -= len(got)
        except OSError:
            pass

    def _send_event(self, text: str) -> None:
        """One server-sent event, as one HTTP chunk, sent at once."""
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _chunk(self, obj) -> None:
        self._send_event("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n")

    def _start_events(self) -> None:
        """The headers of a server-sent event stream (chunked), for both APIs."""
        self._answering = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _end_events(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _failed_midway(self, exc: HTTPError, event: str | None) -> None:
        """An error after the stream began (the engine failed, the time ran out): an error event
        (OpenAI's clients raise it), then the end of the stream and of the connection."""
        log.warning("gateway: a stream ended early: %s", exc.message)
        error = {"message": exc.message, "type": exc.kind}
        if event is None:
            self._chunk({"error": error})
        else:
            payload = {"type": "error", "code": exc.kind, "message": exc.message, "param": None}
            self._send_event(f"event: {event}\ndata: {json.dumps(payload)}\n\n")
        self._end_events()
        self.close_connection = True

    def _events(self, events) -> None:
        """The Responses API's server-sent events (``event:`` and ``data:`` lines) as the turn is
        generated, then the end of the stream (no ``[DONE]``). A refused request raises before
        anything is sent: a plain error answer."""
        events = iter(events)
        first = next(events)
        self._start_events()
        try:
            for kind, payload in itertools.chain([first], events):
                self._send_event(f"event: {kind}\ndata: {json.dumps(payload)}\n\n")
        except HTTPError as exc:
            self._failed_midway(exc, "error")
            return
        self._end_events()

    def _stream(self, events, body: dict) -> None:
        """Server-sent events in OpenAI's chunk format, each piece of text as soon as the engine
        generated it (``Gateway.stream``): the role, the content, then the tool calls, the finish
        reason, the usage when asked, ``[DONE]``. A refused request raises before anything is
        sent: a plain error answer."""
        events = iter(events)
        _, head = next(events)

        def chunk(delta: dict, finish=None, logprobs=None) -> dict:
            c = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
            return {**head, "object": "chat.completion.chunk", "choices": [c]}

        self._start_events()
        self._chunk(chunk({"role": "assistant", "content": ""}))
        try:
            for kind, *payload in events:
                if kind == "text":
                    delta, entries = payload
                    self._chunk(
                        chunk(
                            {"content": delta}, logprobs={"content": entries} if entries else None
                        )
                    )
                else:
                    result = payload[0]
        except HTTPError as exc:
            self._failed_midway(exc, None)
            return
        choice = result["choices"][0]
        for i, call in enumerate(choice["message"].get("tool_calls") or []):
            self._chunk(chunk({"tool_calls": [{"index": i, **call}]}))
        self._chunk(chunk({}, finish=choice["finish_reason"]))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._chunk(
                {**head, "object": "chat.completion.chunk", "choices": [], "usage": result["usage"]}
            )
        self._chunk("[DONE]")
        self._end_events()
