"""The HTTP side of the gateway: routing, authentication, JSON and server-sent events.

Every request is answered here on the server's threads; completions are handed to
``Gateway.submit``, which queues them for the engine thread (see server.py).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from http.server import BaseHTTPRequestHandler

log = logging.getLogger(__name__)

MAX_BODY = 8 * 2**20


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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "agentrl-gateway"

    def log_message(self, fmt, *args):  # the request line only; headers (the token) never
        log.debug("gateway %s: " + fmt, self.client_address[0], *args)

    @property
    def gateway(self):
        return self.server.gateway  # type: ignore[attr-defined]

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        gw = self.gateway
        try:
            if not gw.allow_remote and not is_loopback(self.client_address[0]):
                raise HTTPError(403, "only local connections are accepted", "permission_error")
            body = self._body() if method == "POST" else {}
            if not gw.authorized(self.headers.get("Authorization")):
                gw.counters["unauthorized"] += 1
                raise HTTPError(401, "missing or wrong bearer token", "authentication_error")
            rid, path = _route(self.path)
            rid = rid or self.headers.get("X-AgentRL-Rollout")
            rollout = None
            if rid is not None:
                rollout = gw.rollouts.get(rid)
                if rollout is None:
                    raise HTTPError(404, f"no open rollout {rid!r}", "not_found_error")
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
                gw.counters["requests"] += 1
                result = gw.submit(body, rollout)
                if body.get("stream"):
                    self._stream(result, body)
                else:
                    result.pop("_token_texts", None)
                    self._json(200, result)
            elif method == "POST" and path == "/reward" and rollout is not None:
                gw.report(rollout, body)
                self._json(200, {"ok": True})
            else:
                raise HTTPError(404, f"no route {method} {path}", "not_found_error")
        except HTTPError as exc:
            if exc.status == 400:
                gw.counters["bad_requests"] += 1
            self._json(exc.status, {"error": {"message": exc.message, "type": exc.kind}})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError as exc:
            raise HTTPError(400, "bad Content-Length") from exc
        if length > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise HTTPError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    def _json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, obj) -> None:
        data = ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, result: dict, body: dict) -> None:
        """Server-sent events in OpenAI's chunk format. The engine returns a whole generation, so
        the chunks are sent once it is done: one per generated token of plain content."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        choice = result["choices"][0]
        message = choice["message"]
        head = {k: result[k] for k in ("id", "created", "model")}

        def chunk(delta: dict, finish=None, logprobs=None) -> dict:
            c = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
            return {**head, "object": "chat.completion.chunk", "choices": [c]}

        self._chunk(chunk({"role": "assistant", "content": ""}))
        pieces = result["_token_texts"]
        if message.get("tool_calls") or "".join(pieces) != (message["content"] or ""):
            pieces = [message["content"]] if message["content"] else []
        lps = (choice["logprobs"] or {}).get("content") or []
        for n, piece in enumerate(pieces):
            lp = {"content": [lps[n]]} if len(lps) == len(pieces) and lps else None
            self._chunk(chunk({"content": piece}, logprobs=lp))
        for i, call in enumerate(message.get("tool_calls") or []):
            self._chunk(chunk({"tool_calls": [{"index": i, **call}]}))
        self._chunk(chunk({}, finish=choice["finish_reason"]))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._chunk(
                {**head, "object": "chat.completion.chunk", "choices": [], "usage": result["usage"]}
            )
        self._chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
