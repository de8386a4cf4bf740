"""A pricing API over real HTTP on 127.0.0.1, with latency, errors and timeouts built in.

``PriceService`` serves ``GET /price?item=<name>`` from a ``ThreadingHTTPServer`` bound to an
ephemeral port, in threads of this process. Each request names its catalog (``X-Catalog``) and
its position in the episode's calls (``X-Request-Seq``); prices and faults are functions of
``(seed, catalog, item)`` and ``(seed, catalog, seq)``, so they are the same whatever the order
in which concurrent episodes call, and the oracle can foresee a fault and retry (``fault_at``).
A fault is an HTTP 500 (``error_rate``) or a response held back past the client's timeout
(``timeout_rate``); every response waits ``latency_s`` first.

``stop()`` shuts the server down, wakes held responses, joins the handler threads and closes the
socket; it runs on ``close()``, on context exit and, as a last resort, when the object is
garbage-collected or the interpreter exits (``weakref.finalize``).

``fetch_price`` is the client: every failure (HTTP status, timeout, refused connection) becomes
a ``ToolError`` whose message the agent reads.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agentrl.envs.toolcalls import ToolError

# prices are drawn from 1..MAX_PRICE
MAX_PRICE = 20


def price_of(seed: int, catalog: int, item: str) -> int:
    """The price of ``item`` in ``catalog`` (str seeds hash with SHA-512: stable across runs)."""
    return random.Random(f"price/{seed}/{catalog}/{item}").randint(1, MAX_PRICE)


def fault_at(seed: int, catalog: int, seq: int, error_rate: float, timeout_rate: float) -> str:
    """The fault of request ``seq`` of an episode on ``catalog``: "ok", "error" or "hang"."""
    r = random.Random(f"fault/{seed}/{catalog}/{seq}").random()
    if r < error_rate:
        return "error"
    return "hang" if r < error_rate + timeout_rate else "ok"


@dataclass
class Settings:
    """What the server reads on every request (change them while it runs to inject faults)."""

    seed: int
    items: frozenset[str]
    latency_s: float = 0.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    hang_s: float = 5.0
    stopping: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    # handler threads are joined on server_close (held responses are woken first)
    daemon_threads = False
    block_on_close = True

    def __init__(self, settings: Settings):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.settings = settings


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        svc = self.server.settings
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        try:
            catalog = int(self.headers.get("X-Catalog", ""))
            seq = int(self.headers.get("X-Request-Seq", ""))
        except ValueError:
            return self._reply(400, {"error": "X-Catalog and X-Request-Seq must be integers"})
        if url.path != "/price" or len(query.get("item", [])) != 1:
            return self._reply(404, {"error": "use GET /price?item=<name>"})
        fault = fault_at(svc.seed, catalog, seq, svc.error_rate, svc.timeout_rate)
        delay = svc.latency_s + (svc.hang_s if fault == "hang" else 0.0)
        if delay > 0 and svc.stopping.wait(delay):
            return  # shutting down: drop the connection
        if fault == "error":
            return self._reply(500, {"error": "internal server error"})
        item = query["item"][0]
        if item not in svc.items:
            return self._reply(404, {"error": f"no item {item!r}"})
        self._reply(200, {"item": item, "price": price_of(svc.seed, catalog, item)})

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (timed out) and closed the connection

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the http.server API)
        pass


def _shutdown(server: _Server, thread: threading.Thread) -> None:
    server.settings.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join()


class PriceService:
    """The price API. Args: seed (prices and faults), items (the names it knows), latency_s
    (every response waits this long), error_rate (fraction of requests answered HTTP 500),
    timeout_rate (fraction held back ``hang_s`` seconds, past the client's timeout)."""

    def __init__(
        self,
        seed: int,
        items: list[str],
        latency_s: float = 0.0,
        error_rate: float = 0.0,
        timeout_rate: float = 0.0,
        hang_s: float = 5.0,
    ):
        self.settings = Settings(
            seed, frozenset(items), latency_s, error_rate, timeout_rate, hang_s
        )
        self._server: _Server | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def alive(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the price service is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.server_address[1]

    def start(self) -> str:
        """Start serving (no-op when running); returns the base URL."""
        if self._server is None:
            self.settings.stopping = threading.Event()
            server = _Server(self.settings)
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.name = f"price-service:{server.server_address[1]}"
            thread.start()
            self._server = server
            self._finalizer = weakref.finalize(self, _shutdown, server, thread)
        return self.url

    def stop(self) -> None:
        """Stop serving and release the port and the threads (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
        self._server = self._finalizer = None

    def __enter__(self) -> PriceService:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_price(base_url: str, item: str, catalog: int, seq: int, timeout_s: float) -> int:
    """GET the price of ``item``; every failure raises a ToolError the agent can read."""
    query = urllib.parse.urlencode({"item": item})
    req = urllib.request.Request(
        f"{base_url}/price?{query}",
        headers={"X-Catalog": str(catalog), "X-Request-Seq": str(seq)},
    )
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            payload = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        raise ToolError(f"price: HTTP {exc.code} from the price service{detail}", "http") from None
    except TimeoutError:
        raise ToolError(
            f"price: the price service timed out after {timeout_s:g} s", "timeout"
        ) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise ToolError(
                f"price: the price service timed out after {timeout_s:g} s", "timeout"
            ) from None
        raise ToolError(
            f"price: the price service is unreachable ({_reason(exc.reason)})", "unreachable"
        ) from None
    except (ConnectionError, OSError, ValueError) as exc:
        raise ToolError(f"price: the connection failed ({_reason(exc)})", "unreachable") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("price"), int):
        raise ToolError("price: malformed response from the price service", "http")
    return payload["price"]


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        msg = json.loads(exc.read()).get("error")
    except Exception:
        return ""
    finally:
        exc.close()
    return f": {msg}" if isinstance(msg, str) else ""


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return str(reason) or type(reason).__name__
