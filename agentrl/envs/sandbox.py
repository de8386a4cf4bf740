"""Run untrusted Python in a separate, limited process.

``Sandbox.run(script, files)`` writes the files into a fresh temporary working directory, runs
``script`` there in a child process and returns a :class:`SandboxResult` (exit status, truncated
stdout/stderr, whether it timed out, files read back). It never raises on anything the program
does; a sandbox that cannot start is reported in ``SandboxResult.error``.

Every run gets:

- limits (``setrlimit`` in the child before the program runs): CPU seconds (``RLIMIT_CPU``),
  address space (``RLIMIT_AS``), size of any written file (``RLIMIT_FSIZE``, which also caps
  stdout/stderr: they go to files), number of processes (``RLIMIT_NPROC``), core dumps off;
- a wall-clock timeout; on expiry the child's whole session is killed (``SIGKILL``); with
  ``setpriv`` (util-linux) the child also gets ``SIGKILL`` when this process dies in any way;
- a scrubbed environment (``PATH``, ``LANG``, ``HOME`` = the working directory, nothing else: no
  secret of the parent is visible), ``python -I -S`` (no user site, no ``PYTHON*`` variables);
- a temporary working directory, removed afterwards (directories left by a process that was
  killed before its cleanup ran are removed by the next ``Sandbox`` created);
- an audit hook that refuses ``socket.connect/bind/sendto/getaddrinfo`` (a Python-level guard).

Isolation ``namespace`` (the default ``auto`` picks it when running as root and ``unshare`` from
util-linux works) adds, through ``unshare --net --pid --mount --fork --kill-child``:

- a fresh network namespace (only a loopback interface, down): no network at all;
- a fresh PID namespace whose first process is the program: when it exits or is killed, the
  kernel kills every process it left behind (fork bombs, daemons that ``setsid`` away), and
  ``os.getppid()`` is 0, so the program cannot signal the training process;
- a fresh mount namespace with empty tmpfs over the world-writable ``/tmp``, ``/var/tmp``,
  ``/run/lock`` and ``/dev/shm``: writes outside the working directory vanish with the run;
- the program runs as an unprivileged uid/gid of its own (``uid_base`` + a per-run offset, no
  supplementary groups), so ``RLIMIT_NPROC`` is enforced (it is not for uid 0), the rest of the
  file system is read-only to it, and no other process can be signalled.

Isolation ``none`` (not root, or no ``unshare``): the same limits, environment, working
directory, timeout and socket guard, but the program runs as the caller's uid with the caller's
network. It could then signal other processes of that uid and write wherever that uid may, and a
process that leaves the session survives the kill. ``auto`` logs this once as a warning; the
hostile-program tests that need the namespaces are skipped without them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ISOLATIONS = ("auto", "namespace", "none")
# setpriv (util-linux) ties the child's life to this process's
_SETPRIV = shutil.which("setpriv")
# working directories are named <prefix><pid of the owning process>-<random>
_PREFIX = "agentrl-sbx-"
_MASKED_DIRS = ("/tmp", "/var/tmp", "/run/lock", "/dev/shm")

# The child's first code: masks writable dirs, sets limits, drops privileges, guards sockets,
# then runs the script. It is passed with -c so it needs no file the sandbox uid could read.
_BOOT = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
if cfg["mask"]:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for d in cfg["mask"]:
        if os.path.isdir(d) and libc.mount(b"tmpfs", d.encode(), b"tmpfs", 6,
                                            b"size=1m,mode=1777") != 0:
            sys.stderr.write("sandbox: cannot mask %s (errno %d)\n" % (d, ctypes.get_errno()))
            os._exit(125)
if cfg["init"]:
    # PID 1 of the namespace ignores default-action signals (SIGXCPU, SIGXFSZ): it only waits
    # for the program and passes its status on; its exit kills whatever the program left.
    pid = os.fork()
    if pid:
        status = os.waitpid(pid, 0)[1]
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
for name, value in cfg["rlimits"]:
    resource.setrlimit(getattr(resource, name), tuple(value))
if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
def _guard(event, args):
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                 "socket.getaddrinfo"):
        raise PermissionError("network access is disabled in the sandbox")
sys.addaudithook(_guard)
del _guard, cfg, json, resource
sys.argv = [sys.argv[2]]
with open(sys.argv[0]) as _f:
    _code = compile(_f.read(), sys.argv[0], "exec")
del _f
exec(_code, {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": __builtins__})
"""


@dataclass
class SandboxResult:
    """What happened to one sandboxed run.

    returncode: the exit status (negative: killed by that signal; None if it never started).
    stdout, stderr: the first ``max_output_bytes`` of each, decoded (a note marks a cut).
    timed_out: the wall-clock timeout expired and the session was killed.
    files: the requested files read back from the working directory (missing ones absent).
    duration_s: wall time of the run.
    error: why the sandbox itself could not run the program (None when it ran).
    """

    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    files: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    error: str | None = None

    @property
    def status(self) -> str:
        """ "ok", "timeout", "error", "exit <n>" or the name of the killing signal."""
        if self.error is not None:
            return "error"
        if self.timed_out:
            return "timeout"
        if self.returncode == 0:
            return "ok"
        if self.returncode is not None and self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return f"exit {self.returncode}"


class Sandbox:
    """Runs Python scripts under limits (see the module docstring for the guarantees).

    Args:
        cpu_seconds: CPU time of the program (RLIMIT_CPU; SIGXCPU, then SIGKILL one second later).
        wall_seconds: wall-clock timeout of one run; the whole session is killed after it.
        memory_mb: address-space limit (RLIMIT_AS) in MiB.
        file_size_kb: largest file the program may write (RLIMIT_FSIZE), stdout/stderr included.
        max_processes: RLIMIT_NPROC for the program's uid (enforced when it is not root).
        max_output_bytes: bytes of stdout/stderr (and of each file read back) returned.
        isolation: "auto", "namespace" or "none" (see the module docstring).
        python: the interpreter of the program; None picks the first of this process's own and
            ``python3`` on PATH that works in the sandbox (it must be executable, with a readable
            standard library, by the unprivileged uid).
        uid_base: first uid/gid of the unprivileged ids the program runs as (namespace mode);
            each run uses ``uid_base + offset``, the offset from this process's pid and a counter.
        base_dir: where working directories are created (None: the system temp dir).
    """

    def __init__(
        self,
        cpu_seconds: float = 2.0,
        wall_seconds: float = 5.0,
        memory_mb: int = 256,
        file_size_kb: int = 256,
        max_processes: int = 16,
        max_output_bytes: int = 4096,
        isolation: str = "auto",
        python: str | None = None,
        uid_base: int = 200000,
        base_dir: str | None = None,
    ):
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
        for key, value in (("cpu_seconds", cpu_seconds), ("wall_seconds", wall_seconds)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{key} must be > 0, got {value!r}")
        for key, value in (
            ("memory_mb", memory_mb),
            ("file_size_kb", file_size_kb),
            ("max_processes", max_processes),
            ("max_output_bytes", max_output_bytes),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        if memory_mb < 64:
            raise ValueError(f"memory_mb must be >= 64 (the interpreter needs it), got {memory_mb}")
        self.cpu_seconds = float(cpu_seconds)
        self.wall_seconds = float(wall_seconds)
        self.memory_mb = memory_mb
        self.file_size_kb = file_size_kb
        self.max_processes = max_processes
        self.max_output_bytes = max_output_bytes
        self.uid_base = int(uid_base)
        self.base_dir = base_dir
        self.isolation = _resolve_isolation(isolation)
        remove_stale_workdirs(self.base_dir)
        self._counter = 0
        self._lock = threading.Lock()
        self.python = python or self._find_python()

    # ----------------------------------------------------------------- public
    def run(
        self, script: str, files: dict[str, str] | None = None, collect: tuple[str, ...] = ()
    ) -> SandboxResult:
        """Run ``script`` (Python source) with ``files`` beside it; read back ``collect``."""
        start = time.monotonic()
        uid = self._next_uid()
        workdir = None
        try:
            workdir = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=self.base_dir)
            return self._run_in(workdir, uid, script, files or {}, collect, start)
        except Exception as exc:  # the sandbox itself failed: report, never raise
            log.warning("sandbox failed to run a program: %r", exc)
            return SandboxResult(
                None, error=f"{type(exc).__name__}: {exc}", duration_s=time.monotonic() - start
            )
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)

    # ----------------------------------------------------------------- internals
    def _next_uid(self) -> int | None:
        if self.isolation != "namespace":
            return None
        with self._lock:
            self._counter += 1
            return self.uid_base + ((os.getpid() % 4096) * 16 + self._counter % 16)

    def _rlimits(self) -> list[tuple[str, tuple[int, int]]]:
        cpu = max(1, int(round(self.cpu_seconds)))
        mem = self.memory_mb * 2**20
        fsize = self.file_size_kb * 1024
        return [
            ("RLIMIT_CPU", (cpu, cpu + 1)),
            ("RLIMIT_AS", (mem, mem)),
            ("RLIMIT_FSIZE", (fsize, fsize)),
            ("RLIMIT_NPROC", (self.max_processes, self.max_processes)),
            ("RLIMIT_CORE", (0, 0)),
        ]

    def _command(self, uid: int | None, script_path: str) -> list[str]:
        namespace = self.isolation == "namespace"
        boot = {
            "mask": list(_MASKED_DIRS) if namespace else [],
            "rlimits": self._rlimits(),
            "uid": uid,
            "init": namespace,
        }
        cmd = [self.python, "-I", "-S", "-B", "-c", _BOOT, json.dumps(boot), script_path]
        if namespace:
            cmd = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child", "--"] + cmd
        if _SETPRIV is not None:
            # killed with this process, even when it dies without cleaning up (SIGKILL, SIGTERM)
            cmd = [_SETPRIV, "--pdeathsig", "KILL", "--"] + cmd
        return cmd

    def _run_in(
        self,
        workdir: str,
        uid: int | None,
        script: str,
        files: dict[str, str],
        collect: tuple[str, ...],
        start: float,
    ) -> SandboxResult:
        for name, text in {**files, "main.py": script}.items():
            path = os.path.join(workdir, _plain_name(name))
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o644)
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700 if uid is not None else 0o755)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONHASHSEED": "0"}
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                self._command(uid, "main.py"),
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            try:
                timed_out = not _wait(proc, self.wall_seconds)
            finally:
                _kill_session(proc)
            stdout, stderr = (self._read_capped(f) for f in (out, err))
        got = {}
        for name in collect:
            text = _read_file_safely(
                os.path.join(workdir, _plain_name(name)), self.max_output_bytes
            )
            if text is not None:
                got[name] = text
        code = proc.returncode
        if self.isolation == "namespace" and code is not None and code > 128:
            code = 128 - code  # the namespace's init reports a killing signal as 128 + signum
        return SandboxResult(
            code,
            stdout,
            stderr,
            timed_out=timed_out,
            files=got,
            duration_s=time.monotonic() - start,
        )

    def _read_capped(self, f) -> str:
        f.seek(0)
        data = f.read(self.max_output_bytes + 1)
        return _decode_capped(data, self.max_output_bytes)

    def _find_python(self) -> str:
        """The first interpreter that runs (and imports the stdlib) inside the sandbox."""
        candidates = [sys.executable, shutil.which("python3"), "/usr/bin/python3"]
        probe = "import json, math, collections, itertools, re\nprint('ok')\n"
        tried = []
        for cand in dict.fromkeys(c for c in candidates if c):
            self.python = cand
            res = self.run(probe)
            if res.returncode == 0 and res.stdout.strip() == "ok":
                return cand
            tried.append(f"{cand}: {res.status} {res.stderr.strip()[-200:] or res.error}")
        raise RuntimeError(
            "no python interpreter runs in the sandbox (it must be executable and its standard "
            f"library readable by an unprivileged uid); tried: {'; '.join(tried)}"
        )


def remove_stale_workdirs(base_dir: str | None) -> list[str]:
    """Remove working directories left by processes that no longer run (a process killed by
    SIGKILL or an unhandled SIGTERM skips its cleanup). Returns the removed paths."""
    base = base_dir or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        pid = name[len(_PREFIX) :].split("-", 1)[0]
        if not name.startswith(_PREFIX) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its owner still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        removed.append(os.path.join(base, name))
    return removed


def _resolve_isolation(isolation: str) -> str:
    if isolation == "none":
        return "none"
    ok, why = namespaces_available()
    if ok:
        return "namespace"
    if isolation == "namespace":
        raise ValueError(f"sandbox isolation 'namespace' is unavailable: {why}")
    log.warning("sandbox: %s; running programs without namespaces (isolation=none)", why)
    return "none"


_NS_CHECK: tuple[bool, str] | None = None


def namespaces_available() -> tuple[bool, str]:
    """Whether this process can give sandboxed programs their own namespaces, and why not."""
    global _NS_CHECK
    if _NS_CHECK is None:
        if os.geteuid() != 0:
            _NS_CHECK = (False, "not running as root (no namespaces, no uid switch)")
        elif shutil.which("unshare") is None:
            _NS_CHECK = (False, "the unshare command (util-linux) is not installed")
        else:
            cmd = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child", "true"]
            try:
                res = subprocess.run(cmd, capture_output=True, timeout=10)
                ok = res.returncode == 0
                why = res.stderr.decode(errors="replace").strip()
            except (OSError, subprocess.TimeoutExpired) as exc:
                ok, why = False, repr(exc)
            _NS_CHECK = (ok, "" if ok else f"unshare failed: {why}")
    return _NS_CHECK


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for the child to exit; False on timeout. A pidfd wakes up at once on exit (Popen's
    own timed wait polls with sleeps of up to 50 ms)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        return False
    proc.wait()
    return True


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the child's session (and, in namespace mode, through it the PID namespace)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _plain_name(name: str) -> str:
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise ValueError(f"sandbox file names must be plain names, got {name!r}")
    return name


def _decode_capped(data: bytes, limit: int) -> str:
    text = data[:limit].decode("utf-8", errors="replace")
    return text + "\n[output truncated]" if len(data) > limit else text


def _read_file_safely(path: str, limit: int) -> str | None:
    """A regular file the program wrote, without following links or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return _decode_capped(os.read(fd, limit + 1), limit)
    finally:
        os.close(fd)
