"""A check that an env leaves nothing behind: no child process, no socket, no thread.

    with no_leaks():
        suite = ToolUse(...)
        ... episodes, crashes ...
        suite.close()

``no_leaks`` snapshots this process's child processes (recursive), its open inet sockets
(listening or connected) and its live threads (but ``LIBRARY_THREADS``), runs the block, then waits up to ``grace_s`` for
everything new to disappear, and fails naming what is left. ``port_closed`` says whether nothing
accepts connections on a local port any more.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import psutil

# process-wide threads that libraries start once and keep (not an env's to release)
LIBRARY_THREADS = ("tqdm_monitor",)


def snapshot() -> dict[str, set]:
    """What this process holds now: child pids, inet sockets, thread idents."""
    me = psutil.Process()
    children = set()
    for p in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE:
                children.add((p.pid, " ".join(p.cmdline()[:3])))
    sockets = {(c.fd, c.laddr, c.raddr or None, c.status) for c in me.net_connections(kind="inet")}
    threads = {
        (t.ident, t.name)
        for t in threading.enumerate()
        if t.is_alive() and t.name not in LIBRARY_THREADS
    }
    return {"processes": children, "sockets": sockets, "threads": threads}


def leaked(before: dict[str, set]) -> dict[str, set]:
    """What is held now and was not in ``before`` (TIME_WAIT sockets belong to the kernel)."""
    now = snapshot()
    out = {k: now[k] - before[k] for k in now}
    out["sockets"] = {s for s in out["sockets"] if s[3] != psutil.CONN_TIME_WAIT}
    return {k: v for k, v in out.items() if v}


@contextlib.contextmanager
def no_leaks(grace_s: float = 3.0):
    """Fail if the block leaves a process, a socket or a thread behind (after ``grace_s``)."""
    before = snapshot()
    yield
    deadline = time.monotonic() + grace_s
    left = leaked(before)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = leaked(before)
    assert not left, f"left behind after the env closed: {left}"


def port_closed(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing accepts a TCP connection on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) != 0
