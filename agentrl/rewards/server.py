"""A reference scoring service for ``reward=api`` (stdlib only), with fault injection.

    python -m agentrl.rewards.server --port 8000
    python -m agentrl.rewards.server --port 8000 --fault http500 --fail-first 2

``POST /score`` takes the request schema of docs/rewards.md and scores each episode: 1.0 when
the last action contains the task's answer as its final number (``<answer>42</answer>`` or
plain text), else 0.0, minus ``--turn-cost`` per turn. ``GET /stats`` returns request counts
and the most requests seen in flight at once.

Faults (``--fault``), applied to every request, or to the first ``--fail-first N`` only:
``http500`` (an HTTP 500), ``malformed`` (a 200 whose body is not JSON), ``timeout`` (answers
after ``--delay`` seconds; pair it with a shorter client timeout), ``slow`` (every request waits
``--delay`` seconds, then answers correctly), ``reset`` (closes the connection unanswered).
``close()`` ends every wait at once (the held requests are dropped unanswered).
``--require-key-env VAR``: requests must carry ``Authorization: Bearer $VAR`` (else HTTP 401).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("none", "http500", "malformed", "timeout", "slow", "reset")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def score_item(item: dict, turn_cost: float = 0.0) -> dict:
    """The reference score of one request item."""
    turns = item["trajectory"]["turns"]
    last = turns[-1]["action"] if turns else ""
    numbers = _NUMBER.findall(last)
    answer = item["task"].get("answer")
    correct = bool(numbers) and answer is not None and numbers[-1] == str(answer)
    cost = turn_cost * len(turns)
    return {
        "id": item["id"],
        "reward": float(correct) - cost,
        "components": {"correct": float(correct), "turn_cost": -cost},
    }


class ScoringServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address=("127.0.0.1", 0),
        fault: str = "none",
        fail_first: int | None = None,
        delay: float = 2.0,
        turn_cost: float = 0.0,
        require_key: str | None = None,
    ):
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        super().__init__(address, _Handler)
        self.fault = fault
        self.fail_first = fail_first
        self.delay = delay
        self.turn_cost = turn_cost
        self.require_key = require_key
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.stats = {"requests": 0, "items": 0, "in_flight": 0, "max_in_flight": 0}
        self.auth_seen: list[str] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/score"

    def faulty(self, number: int) -> bool:
        """Whether request ``number`` (1-based) gets the fault."""
        return self.fault != "none" and (self.fail_first is None or number <= self.fail_first)

    def start(self) -> ScoringServer:
        """Serve in a daemon thread (tests); ``close()`` stops it."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()

    def __enter__(self) -> ScoringServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server: ScoringServer

    def log_message(self, format, *args):  # quiet: tests and CI read stderr
        pass

    def _send(self, code: int, body: bytes) -> None:
        # a request stops counting as in flight before its answer goes out: once the client has
        # the answer it may send the next one, which must not find this one still counted
        self._leave()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.rstrip("/") == "/stats":
            with self.server.lock:
                self._send(200, json.dumps(self.server.stats).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self):
        srv = self.server
        with srv.lock:
            srv.stats["requests"] += 1
            number = srv.stats["requests"]
            srv.stats["in_flight"] += 1
            srv.stats["max_in_flight"] = max(srv.stats["max_in_flight"], srv.stats["in_flight"])
        self._counted = True
        try:
            self._answer(srv, number)
        finally:
            self._leave()

    def _leave(self) -> None:
        """Take this request out of ``in_flight`` (once; GET requests were never in it)."""
        if getattr(self, "_counted", False):
            self._counted = False
            with self.server.lock:
                self.server.stats["in_flight"] -= 1

    def _answer(self, srv: ScoringServer, number: int) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with srv.lock:
            srv.auth_seen.append(self.headers.get("Authorization", ""))
        if srv.require_key is not None and self.headers.get("Authorization") != (
            f"Bearer {srv.require_key}"
        ):
            return self._send(401, b'{"error": "unauthorized"}')
        fault = srv.fault if srv.faulty(number) else "none"
        if (fault == "timeout" or srv.fault == "slow") and srv.closing.wait(srv.delay):
            self.close_connection = True  # shutting down: drop the request unanswered
            return None
        if fault == "http500":
            return self._send(500, b'{"error": "injected fault"}')
        if fault == "malformed":
            return self._send(200, b'{"results": [oops')
        if fault == "reset":
            self.close_connection = True
            self.connection.close()
            return None
        try:
            request = json.loads(body)
            results = [score_item(it, srv.turn_cost) for it in request["items"]]
        except (ValueError, KeyError, TypeError) as exc:
            return self._send(400, json.dumps({"error": f"bad request: {exc}"}).encode())
        with srv.lock:
            srv.stats["items"] += len(results)
        return self._send(200, json.dumps({"results": results}).encode())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--fault", choices=FAULTS, default="none")
    p.add_argument("--fail-first", type=int, default=None, help="fault only the first N requests")
    p.add_argument("--delay", type=float, default=2.0, help="seconds for slow/timeout faults")
    p.add_argument("--turn-cost", type=float, default=0.0, help="subtracted per turn")
    p.add_argument("--require-key-env", default=None, help="env var holding the expected key")
    args = p.parse_args(argv)
    key = os.environ.get(args.require_key_env) if args.require_key_env else None
    if args.require_key_env and not key:
        p.error(f"--require-key-env {args.require_key_env}: the variable is not set")
    srv = ScoringServer(
        (args.host, args.port), args.fault, args.fail_first, args.delay, args.turn_cost, key
    )
    # the first line tells a launcher where to connect (port 0 picks a free one)
    print(f"serving on {srv.url}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
