"""The shop's HTTP server: stdlib ``ThreadingHTTPServer`` on 127.0.0.1, an ephemeral port, a thread.

One server serves every episode: each episode gets a session (``/s/<sid>/...``) bound to the seed
of its task's site, with its own cart and orders. Sessions live in process memory, so the verifier
reads an episode's orders directly; the oldest are dropped beyond ``max_sessions``.

``ShopServer`` is a context manager; ``close()`` shuts the server down, closes the listening
socket and joins the thread (idempotent).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from agentrl.envs.webnav import shop
from agentrl.envs.webnav.shop import Item, Site

log = logging.getLogger(__name__)


@dataclass
class Order:
    number: int
    items: list[Item]
    name: str


@dataclass
class Session:
    site: Site
    cart: list[Item] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)


class ShopServer:
    """Serves generated sites over HTTP. ``site_kwargs`` go to ``shop.generate_site``."""

    def __init__(self, page_size: int = 4, max_sessions: int = 20000, **site_kwargs):
        self.page_size = page_size
        self.max_sessions = max_sessions
        self.site_kwargs = site_kwargs
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._sites: OrderedDict[int, Site] = OrderedDict()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the shop server is not started")
        return self._httpd.server_address[1]

    def start(self) -> ShopServer:
        if self.running:
            return self
        self.close()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.shop = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="webnav-http"
        )
        self._thread.daemon = True
        self._thread.start()
        log.debug("webnav shop serving on 127.0.0.1:%d", self.port)
        return self

    def close(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            if thread is not None and thread.is_alive():
                httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=10)

    def __enter__(self) -> ShopServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ sessions
    def site(self, seed: int) -> Site:
        with self._lock:
            site = self._sites.get(seed)
            if site is None:
                site = shop.generate_site(seed, **self.site_kwargs)
                self._sites[seed] = site
                if len(self._sites) > 512:
                    self._sites.popitem(last=False)
            return site

    def new_session(self, site_seed: int) -> str:
        """A fresh session on the site of ``site_seed``; returns its id."""
        site = self.site(site_seed)
        with self._lock:
            sid = f"{next(self._ids):x}"
            self._sessions[sid] = Session(site)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return sid

    def session(self, sid: str) -> Session | None:
        with self._lock:
            return self._sessions.get(sid)

    def url(self, sid: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/s/{sid}/{path}"

    # ------------------------------------------------------------------ routing
    def handle(self, method: str, path: str, form: dict[str, str]) -> tuple[int, str, str | None]:
        """(status, html, redirect location or None) for one request."""
        parts = urlsplit(path)
        segs = parts.path.split("/")
        if len(segs) < 3 or segs[1] != "s":
            return HTTPStatus.NOT_FOUND, shop.not_found_page("/"), None
        sid, route = segs[2], "/".join(segs[3:])
        prefix = f"/s/{sid}/"
        sess = self.session(sid)
        if sess is None:
            return HTTPStatus.NOT_FOUND, shop.not_found_page(prefix), None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            return self._route(sess, prefix, method, route, {**query, **form})

    def _route(self, sess: Session, prefix: str, method: str, route: str, args: dict):
        site, n = sess.site, len(sess.cart)
        page = _int(args.get("p"), 1)
        if method == "POST":
            return self._post(sess, prefix, route, args)
        if route == "":
            return HTTPStatus.OK, shop.home_page(site, prefix, n), None
        if route.startswith("c/") and route[2:] in site.kinds:
            html = shop.category_page(site, prefix, n, route[2:], page, self.page_size)
            return HTTPStatus.OK, html, None
        if route == "search":
            q = args.get("q", "")
            return HTTPStatus.OK, shop.search_page(site, prefix, n, q, page, self.page_size), None
        if route.startswith("i/") and (item := site.item(_int(route[2:], -1))) is not None:
            return HTTPStatus.OK, shop.item_page(item, prefix, n), None
        if route == "cart":
            return HTTPStatus.OK, shop.cart_page(sess.cart, prefix), None
        if route == "checkout":
            return HTTPStatus.OK, shop.checkout_page(sess.cart, prefix), None
        if route.startswith("order/"):
            num = _int(route[6:], -1)
            order = next((o for o in sess.orders if o.number == num), None)
            if order is not None:
                return HTTPStatus.OK, shop.order_page(num, order.items, order.name, prefix), None
        return HTTPStatus.NOT_FOUND, shop.not_found_page(prefix), None

    def _post(self, sess: Session, prefix: str, route: str, args: dict):
        see_other = HTTPStatus.SEE_OTHER
        if route == "cart/add" and (item := sess.site.item(_int(args.get("id"), -1))):
            sess.cart.append(item)
            return see_other, "", f"{prefix}cart"
        if route == "cart/remove":
            item_id = _int(args.get("id"), -1)
            idx = next((i for i, it in enumerate(sess.cart) if it.id == item_id), None)
            if idx is not None:
                sess.cart.pop(idx)
            return see_other, "", f"{prefix}cart"
        if route == "checkout":
            name = " ".join(args.get("name", "").split())
            error = "the cart is empty" if not sess.cart else "" if name else "enter a name"
            if error:
                return HTTPStatus.OK, shop.checkout_page(sess.cart, prefix, error), None
            order = Order(len(sess.orders) + 1, list(sess.cart), name)
            sess.orders.append(order)
            sess.cart.clear()
            return see_other, "", f"{prefix}order/{order.number}"
        return HTTPStatus.NOT_FOUND, shop.not_found_page(prefix), None


def _int(text, default: int) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # an idle keep-alive connection (a browser's) is dropped after this many seconds, so no
    # request thread outlives its client for long
    timeout = 10

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self._serve("GET", {})

    def do_POST(self) -> None:  # noqa: N802
        length = min(int(self.headers.get("Content-Length") or 0), 1 << 16)
        body = self.rfile.read(length).decode("utf-8", "replace")
        self._serve("POST", {k: v[-1] for k, v in parse_qs(body).items()})

    def _serve(self, method: str, form: dict[str, str]) -> None:
        status, html, location = self.server.shop.handle(method, self.path, form)  # type: ignore[attr-defined]
        data = html.encode()
        self.send_response(status)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:  # noqa: A002 (the stdlib's signature)
        log.debug("webnav http: " + format, *args)
