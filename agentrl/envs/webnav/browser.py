"""The browser backend: Debian's headless Chromium, driven over the DevTools protocol (CDP).

Chromium is started by ``Chromium.start()`` with ``--remote-debugging-pipe`` (CDP messages,
NUL-separated JSON, on its fds 3 and 4: no debugging port is opened) and flags that keep it off
the network: every proxied request goes to 127.0.0.1:9 (nothing listens there) except the shop's
own 127.0.0.1, host names do not resolve, and background services, extensions, sync, component
updates and first-run pages are off. Its profile is a temporary directory. ``close()`` asks it to
quit, kills its whole process group, waits for it and deletes the profile; if this process dies
first, the pipe closes and Chromium quits by itself.

One tab serves every episode: ``BrowserDriver`` (one per episode env) reloads the episode's page
and re-applies its typed values before acting, so interleaved episodes never see each other's
state. Pages are rendered from the DOM's HTML after scripts ran, so JavaScript content shows.

A long-lived Chromium gets slower page after page (measured on the 2-core dev machine, oracle
demonstrations of webnav's recipe: ~200 ms each on a fresh one, ~350 ms after 800 of them, the
5,000 of its warm start not done in 85 min), so the process is restarted after ``recycle_pages``
page loads, at the next navigation (a page the episode reloads anyway; its fields are re-applied
as for an interleaved episode): ~200 ms each throughout (bench note in docs/envs.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from agentrl.envs.webnav.env import SiteError
from agentrl.envs.webnav.render import MARK, MARKED, Element, Page, parse

log = logging.getLogger(__name__)

FLAGS = (
    "--headless=new",
    "--remote-debugging-pipe",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
)
# seconds a click has to start a navigation before it counts as an in-page action
NAV_START_S = 1.0
# copies the pipe ends onto fds 3 and 4 (where Chromium expects them), then becomes Chromium
_TRAMPOLINE = (
    "import os, sys; a, b = int(sys.argv[1]), int(sys.argv[2]); os.dup2(a, 3); os.dup2(b, 4); "
    "os.close(a); os.close(b); os.execv(sys.argv[3], sys.argv[3:])"
)
# stamps every element that can be interactive with its index (render.MARK), copies live field
# values into their value attributes, and returns the URL and the DOM's HTML
_SNAPSHOT = f"""(() => {{
  document.querySelectorAll({json.dumps(MARKED)}).forEach((el, i) => {{
    el.setAttribute({json.dumps(MARK)}, String(i));
    if (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA') el.setAttribute('value', el.value);
  }});
  return JSON.stringify([location.href, document.documentElement.outerHTML]);
}})()"""


class BrowserError(SiteError):
    """Chromium failed, quit, or did not answer in time."""


class Chromium:
    """A headless Chromium process and one tab, over a CDP pipe. A context manager."""

    def __init__(
        self, executable: str = "chromium", timeout: float = 10.0, recycle_pages: int = 1000
    ):
        if recycle_pages < 1:
            raise ValueError(f"recycle_pages must be >= 1, got {recycle_pages}")
        self.executable = executable
        self.timeout = timeout
        self.recycle_pages = recycle_pages
        # pages loaded by this process; a fresh one is started at the first navigation after
        # recycle_pages of them
        self.loads = 0
        self.restarts = 0
        self.proc: subprocess.Popen | None = None
        self.profile: str | None = None
        self.session: str | None = None
        self.shown: int | None = None
        self._to = self._from = None
        self._buf = b""
        self._events: list[dict] = []
        self._ids = itertools.count(1)
        # set once the pipe failed: the suite then starts a fresh Chromium
        self.broken = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self.broken and self.proc.poll() is None

    def start(self) -> Chromium:
        # a name is looked up on PATH; a path must be an executable file
        executable = shutil.which(self.executable)
        if executable is None:
            raise BrowserError(
                f"Chromium not found: {self.executable!r} is not an executable on PATH "
                "(Debian: apt-get install chromium)"
            )
        self.loads, self._buf = 0, b""
        self._events.clear()
        self.profile = tempfile.mkdtemp(prefix="agentrl-chromium-")
        to_r, self._to = os.pipe()
        self._from, from_w = os.pipe()
        a = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 5)
        b = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 5)
        os.close(to_r)
        os.close(from_w)
        flags = [*FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        if os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        cmd = [sys.executable, "-c", _TRAMPOLINE, str(a), str(b), executable, *flags]
        try:
            with open(os.path.join(self.profile, "stderr.log"), "wb") as err:
                self.proc = subprocess.Popen(
                    cmd,
                    pass_fds=(a, b),
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
        finally:
            os.close(a)
            os.close(b)
        try:
            self.call("Browser.getVersion", timeout=max(30.0, self.timeout))
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call(
                "Target.attachToTarget", {"targetId": target, "flatten": True}
            )["sessionId"]
            self.call("Page.enable", session=True)
            self.call("Runtime.enable", session=True)
        except BaseException:
            self.close()
            raise
        log.info("webnav: Chromium started (pid %d)", self.proc.pid)
        return self

    def close(self) -> None:
        """Quit Chromium, kill what is left of its process group, delete the profile."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(Exception):
                    self._send("Browser.close", {}, None)
                    proc.wait(timeout=3)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for fd in (self._to, self._from):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to = self._from = None
        self.session = self.shown = None
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ CDP
    def _send(self, method: str, params: dict, session: str | None) -> int:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._to, data) :]
        except (OSError, TypeError) as exc:
            self.broken = True
            raise BrowserError(f"Chromium is gone ({method}): {exc}") from exc
        return msg_id

    def _read(self, deadline: float, quiet: bool = False) -> dict | None:
        """The next message; at the deadline None if ``quiet``, else a BrowserError."""
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from], [], [], left)[0]:
                if quiet:
                    return None
                self.broken = True
                raise BrowserError("Chromium did not answer in time")
            chunk = os.read(self._from, 1 << 16)
            if not chunk:
                self.broken = True
                raise BrowserError(f"Chromium quit (exit code {self.proc and self.proc.poll()})")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout=None):
        """Send one command (to the tab's session if ``session``) and return its result."""
        if self.proc is None:
            raise BrowserError("Chromium is not running")
        msg_id = self._send(method, params or {}, self.session if session else None)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._read(deadline)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self._events.append(msg)

    def wait_event(self, method: str, timeout: float | None = None, quiet: bool = False):
        """The tab's next ``method`` event; at the timeout None if ``quiet``, else an error."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method and ev.get("sessionId") == self.session:
                    return self._events.pop(i)
            msg = self._read(deadline, quiet)
            if msg is None:
                return None
            if "method" in msg:
                self._events.append(msg)

    def evaluate(self, expression: str):
        out = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in out:
            raise BrowserError(f"script failed: {out['exceptionDetails'].get('text')}")
        return out["result"].get("value")

    # ------------------------------------------------------------------ the tab
    def navigate(self, url: str) -> None:
        if self.loads >= self.recycle_pages:
            log.debug("webnav: Chromium restarted after %d page loads", self.loads)
            self.close()
            self.start()
            self.restarts += 1
        self.loads += 1
        self._events.clear()
        out = self.call("Page.navigate", {"url": url}, session=True)
        if out.get("errorText"):
            raise SiteError(f"the site did not answer GET {url}: {out['errorText']}")
        self.wait_event("Page.loadEventFired")

    def act(self, script: str) -> None:
        """Run ``script`` (a click or a form submission) and, if it starts a navigation within
        NAV_START_S, wait for the page it loads (a script may instead change the page in place)."""
        self._events.clear()
        if not self.evaluate(script):
            raise BrowserError("the element to act on is not in the page")
        if self.wait_event("Page.frameStartedLoading", NAV_START_S, quiet=True) is not None:
            self.loads += 1
            self.wait_event("Page.loadEventFired")

    _pages = itertools.count(1)

    def snapshot(self) -> Page:
        url, html = json.loads(self.evaluate(_SNAPSHOT))
        if not url.startswith("http://127.0.0.1:"):
            raise SiteError(f"the site did not answer (the browser shows {url})")
        page = parse(html, url)
        page.token = next(self._pages)
        self.shown = page.token
        return page


def _find(mark: int) -> str:
    return f"document.querySelector('[{MARK}=\"{mark}\"]')"


class BrowserDriver:
    """An episode's view of the shared tab (see the module docstring)."""

    def __init__(self, chromium: Chromium):
        self.chromium = chromium

    def load(self, url: str) -> Page:
        self.chromium.navigate(url)
        return self.chromium.snapshot()

    def _restore(self, page: Page) -> None:
        """Show ``page`` in the tab again, with the values typed into its fields."""
        if self.chromium.shown != page.token:
            self.chromium.navigate(page.url)
            self.chromium.snapshot()
        values = {e.mark: e.node.get("value") or "" for e in page.elements if e.kind == "field"}
        script = ";".join(f"{_find(m)}.value = {json.dumps(v)}" for m, v in values.items())
        self.chromium.evaluate(f"(() => {{ {script}; return true; }})()")

    def follow(self, page: Page, el: Element) -> Page:
        self._restore(page)
        self.chromium.act(
            f"(() => {{ const el = {_find(el.mark)}; el && el.click(); return !!el; }})()"
        )
        return self.chromium.snapshot()

    def submit(self, page: Page, form, submitter: Element | None) -> Page:
        self._restore(page)
        if submitter is not None:
            return self.follow(page, submitter)
        mark = next(int(d.get(MARK)) for d in form.iter() if d.get(MARK) is not None)
        self.chromium.act(
            f"(() => {{ const el = {_find(mark)}; el && el.form.requestSubmit(); return !!el; }})()"
        )
        return self.chromium.snapshot()
