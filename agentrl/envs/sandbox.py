"""Run untrusted Python in a separate, limited process.

``Sandbox.run(script, files)`` writes the files into a fresh temporary working directory, runs
``script`` there in a child process and returns a :class:`SandboxResult` (exit status, truncated
stdout/stderr, whether it timed out or filled its working directory, files read back). It never
raises on anything the program does; a sandbox that cannot start is reported in
``SandboxResult.error``.

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
- an audit hook that refuses ``socket.connect/bind/sendto/getaddrinfo`` (a Python-level guard);
- a seccomp filter (x86_64 and aarch64; :func:`seccomp_filter`), which ctypes cannot get around:
  no ``socket()`` but netlink (and, with namespaces, AF_INET/AF_INET6, which have no route there),
  so no Unix socket on the host file system can be reached; no datagram ``socketpair``; no new
  namespaces (``unshare``/``clone`` with ``CLONE_NEW*``, ``setns``); no io_uring, kernel keyring,
  bpf, perf_event_open, userfaultfd. Without namespaces it also blocks AF_INET sockets.

Isolation ``namespace`` (the default ``auto`` picks it when running as root and ``unshare`` from
util-linux works) adds, through ``unshare --net --pid --mount --mount-proc --fork --kill-child``:

- a fresh network namespace (only a loopback interface, down): no network at all;
- a fresh PID namespace with its own ``/proc``: the program sees only its namespace's processes
  (no host command line or environment to read). Its init (root, this module's code) runs the
  program, kills it at the wall clock, then kills everything left (fork bombs, daemons that
  ``setsid`` away), copies the requested files out and reports in a status file; the program
  cannot signal it or the training process. This process's own kill of the session comes
  ``_BACKSTOP_S`` later, should the init not finish (its files are then not read back);
- a fresh mount namespace with empty tmpfs over the world-writable ``/tmp``, ``/var/tmp``,
  ``/run/lock`` and ``/dev/shm``: writes outside the working directory vanish with the run;
- the working directory is a tmpfs of ``workdir_size_mb`` MiB and ``workdir_files`` inodes over
  the host directory: many small files cannot fill the disk; once it is full, writes fail with
  ENOSPC and the result says so (``workdir_full``, a last line of stderr);
- the program runs as an unprivileged uid/gid of its own (``uid_base`` + a per-run offset, no
  supplementary groups), so ``RLIMIT_NPROC`` is enforced (it is not for uid 0), the rest of the
  file system is read-only to it, and no other process can be signalled.

Isolation ``none`` (not root, or no ``unshare``): the same limits, environment, working
directory (a plain directory: no size limit but ``RLIMIT_FSIZE`` per file), timeout, socket guard
and seccomp filter, but the program runs as the caller's uid, sees the host's processes in
``/proc``, and the parent kills it at the wall clock. It could then signal other processes of
that uid and write wherever that uid may, and a process that leaves the session survives the
kill. ``auto`` logs this once as a warning; the hostile-program tests that need the namespaces
are skipped without them when not root (and fail as root, where the namespaces must work).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import select
import shutil
import signal
import stat
import struct
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
_UNSHARE = ["unshare", "--net", "--pid", "--mount", "--mount-proc", "--fork", "--kill-child"]
# what the namespace's init reports (written into the host working directory, which the program
# cannot reach: the working directory's tmpfs is mounted over it)
_STATUS = ".agentrl-sandbox-status.json"
# the parent's own kill comes this long after the namespace's init should have stopped the program
_BACKSTOP_S = 2.0

# The child's first code. In namespace mode it is the PID namespace's init (root): it mounts the
# working directory's tmpfs, copies the given files in, masks the writable dirs, forks the
# program, stops it at the wall-clock limit, kills whatever it left, copies the requested files
# out and reports. The program's process sets limits, drops privileges, installs the seccomp
# filter and the socket guard, then runs the script. Passed with -c so it needs no file the
# sandbox uid could read.
_BOOT = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
if cfg["seccomp"] or cfg["ns"]:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
def fail(what, err=None):  # before the program runs: the parent reports it as an error
    err = ctypes.get_errno() if err is None else err
    sys.stderr.write("sandbox: cannot %s (errno %d)\n" % (what, err))
    os._exit(125)
if cfg["ns"]:
    import select, signal, stat, time
    host = os.open(".", os.O_RDONLY | os.O_DIRECTORY)  # filled by the parent, read back by it
    for d in cfg["mask"]:
        if os.path.isdir(d) and libc.mount(b"tmpfs", d.encode(), b"tmpfs", 6,
                                            b"size=1m,mode=1777") != 0:
            fail("mask " + d)
    wd = cfg["workdir"]
    os.makedirs(wd, exist_ok=True)  # inside a masked dir: a fresh mount point on its tmpfs
    opts = "size=%d,nr_inodes=%d,mode=0700,uid=%d,gid=%d" % (
        cfg["wd_bytes"], cfg["wd_files"] + 1, cfg["uid"], cfg["uid"])
    if libc.mount(b"tmpfs", wd.encode(), b"tmpfs", 6, opts.encode()) != 0:
        fail("mount the working directory")
    os.chdir(wd)
    try:  # ENOSPC: the given files alone are larger than the working directory's limits
        for name in os.listdir(host):
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=host)
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            while os.sendfile(dst, src, None, 1 << 20):
                pass
            os.close(src)
            os.close(dst)
    except OSError as e:
        fail("copy the given files into the working directory", e.errno)
    # PID 1 of the namespace ignores default-action signals (SIGXCPU, SIGXFSZ): it only waits
    # for the program; its exit kills whatever the program left.
    pid = os.fork()
    if pid:
        pidfd = os.pidfd_open(pid)
        wait = max(0.0, cfg["deadline"] - time.monotonic())  # the wall clock includes startup
        timed_out = not select.select([pidfd], [], [], wait)[0]
        status = None
        while True:  # SIGKILL and reap everything, so that nothing writes any more
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p, st = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if p == pid:
                status = st
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        for name in cfg["collect"]:
            try:
                os.unlink(name, dir_fd=host)
            except FileNotFoundError:
                pass
            try:
                src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            if stat.S_ISREG(os.fstat(src).st_mode):
                dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                              0o600, dir_fd=host)
                os.write(dst, os.read(src, cfg["read_bytes"]))
                os.close(dst)
            os.close(src)
        fs = os.statvfs(".")
        report = {"returncode": rc, "timed_out": timed_out,
                  "workdir_full": fs.f_bfree == 0 or fs.f_ffree == 0}
        dst = os.open(cfg["status"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=host)
        os.write(dst, json.dumps(report).encode())
        os._exit(128 - rc if rc < 0 else rc)
    os.close(host)
for name, value in cfg["rlimits"]:
    resource.setrlimit(getattr(resource, name), tuple(value))
if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
if cfg["seccomp"]:
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    code = bytes.fromhex(cfg["seccomp"])
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = Fprog(len(code) // 8, ctypes.addressof(buf))
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        fail("install the seccomp filter")
    del Fprog, code, buf, fprog
def _guard(event, args):
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                 "socket.getaddrinfo"):
        raise PermissionError("network access is disabled in the sandbox")
sys.addaudithook(_guard)
del _guard, cfg, json, resource, fail
sys.argv = [sys.argv[2]]
with open(sys.argv[0]) as _f:
    _code = compile(_f.read(), sys.argv[0], "exec")
del _f
exec(_code, {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": __builtins__})
"""

# ----------------------------------------------------------------- the seccomp filter
# seccomp_data (linux/seccomp.h): int nr at 0, u32 arch at 4, u64 args[6] from 16 (the low
# 32 bits of an argument at 16 + 8 * i on these little-endian machines)
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# syscall numbers: (x86_64, aarch64)
_NR = {
    "socket": (41, 198),
    "socketpair": (53, 199),
    "unshare": (272, 97),
    "clone": (56, 220),
    "clone3": (435, 435),
    "setns": (308, 268),
    "io_uring_setup": (425, 425),  # io_uring does socket/connect without those syscalls
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
}
_DENIED = (
    "setns",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "add_key",
    "request_key",
    "keyctl",
    "bpf",
    "perf_event_open",
    "userfaultfd",
)
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (clone's low byte is the
# exit signal, so CLONE_NEWTIME = 0x80 only counts for unshare)
_CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
_CLONE_NEW |= 0x40000000
_AF_INET, _AF_INET6, _AF_NETLINK = 2, 10, 16
_SOCK_STREAM, _SOCK_SEQPACKET = 1, 5


def seccomp_filter(inet: bool, machine: str | None = None) -> bytes | None:
    """The classic-BPF seccomp program of a sandboxed program (None: no filter for this machine).

    EPERM for: socket() of any family but netlink (and, with ``inet``, AF_INET/AF_INET6, which
    have no route in the program's network namespace), so no AF_UNIX socket can reach a path on
    the host; socketpair() but of stream/seqpacket type (a datagram pair could sendto a path);
    unshare/clone with a CLONE_NEW* flag; setns; io_uring; the kernel keyring, bpf,
    perf_event_open, userfaultfd; every syscall of another ABI (i386, x32). ENOSYS for clone3,
    whose flags a filter cannot read: libc falls back to clone."""
    machine = machine or platform.machine()
    if machine not in _AUDIT_ARCH:
        return None
    nr = {name: nums[0 if machine == "x86_64" else 1] for name, nums in _NR.items()}
    ld, jeq, jge, jset, and_, ret = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    prog: list = [(ld, 0, 0, 4), (jeq, 0, "eperm", _AUDIT_ARCH[machine]), (ld, 0, 0, 0)]
    if machine == "x86_64":
        prog.append((jge, "eperm", 0, 0x40000000))  # the x32 ABI
    prog += [
        (jeq, "socket", 0, nr["socket"]),
        (jeq, "socketpair", 0, nr["socketpair"]),
        (jeq, "unshare", 0, nr["unshare"]),
        (jeq, "clone", 0, nr["clone"]),
        (jeq, "enosys", 0, nr["clone3"]),
        *[(jeq, "eperm", 0, nr[name]) for name in _DENIED],
        (ret, 0, 0, allow),
        "socket",
        (ld, 0, 0, 16),
        (jeq, "allow", 0, _AF_NETLINK),
        *([(jeq, "allow", 0, _AF_INET), (jeq, "allow", 0, _AF_INET6)] if inet else []),
        (ret, 0, 0, eperm),
        "socketpair",
        (ld, 0, 0, 24),
        (and_, 0, 0, 0xF),  # without SOCK_NONBLOCK / SOCK_CLOEXEC
        (jeq, "allow", 0, _SOCK_STREAM),
        (jeq, "allow", 0, _SOCK_SEQPACKET),
        (ret, 0, 0, eperm),
        "unshare",
        (ld, 0, 0, 16),
        (jset, "eperm", 0, _CLONE_NEW | 0x80),
        (ret, 0, 0, allow),
        "clone",
        (ld, 0, 0, 16),
        (jset, "eperm", 0, _CLONE_NEW),
        "allow",
        (ret, 0, 0, allow),
        "eperm",
        (ret, 0, 0, eperm),
        "enosys",
        (ret, 0, 0, enosys),
    ]
    labels, code = {}, []
    for item in prog:
        if isinstance(item, str):
            labels[item] = len(code)
        else:
            code.append(item)
    out = b""
    for i, (op, jt, jf, k) in enumerate(code):
        jt, jf = ((labels[j] - i - 1) if isinstance(j, str) else j for j in (jt, jf))
        out += struct.pack("=HBBI", op, jt, jf, k)
    return out


@dataclass
class SandboxResult:
    """What happened to one sandboxed run.

    returncode: the exit status (negative: killed by that signal; None if it never started).
    stdout, stderr: the first ``max_output_bytes`` of each, decoded (a note marks a cut).
    timed_out: the wall-clock timeout expired and the session was killed.
    files: the requested files read back from the working directory (missing ones absent).
    duration_s: wall time of the run.
    error: why the sandbox itself could not run the program (None when it ran).
    workdir_full: the working directory's tmpfs was full when the program ended (its size or
        file-count limit; writes failed with ENOSPC); a line at the end of stderr says so.
    """

    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    files: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    error: str | None = None
    workdir_full: bool = False

    @property
    def status(self) -> str:
        """ "ok", "timeout", "error", "workdir_full", "exit <n>" or the killing signal's name."""
        if self.error is not None:
            return "error"
        if self.timed_out:
            return "timeout"
        if self.workdir_full:
            return "workdir_full"
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
        workdir_size_mb: size of the working directory's tmpfs in MiB, the given files included
            (namespace mode; writes past it fail with ENOSPC and the result says so).
        workdir_files: files and directories the working directory may hold, the given ones
            included (the tmpfs's inodes; namespace mode).
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
        workdir_size_mb: int = 16,
        workdir_files: int = 256,
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
            ("workdir_size_mb", workdir_size_mb),
            ("workdir_files", workdir_files),
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
        self.workdir_size_mb = workdir_size_mb
        self.workdir_files = workdir_files
        self.uid_base = int(uid_base)
        self.base_dir = base_dir
        self.isolation = _resolve_isolation(isolation)
        self._seccomp = seccomp_filter(inet=self.isolation == "namespace")
        if self._seccomp is None:
            _warn_once(
                f"sandbox: no seccomp filter for this machine ({platform.machine()}): Unix "
                "sockets, new namespaces and io_uring are not blocked"
            )
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

    def _command(
        self, uid: int | None, workdir: str, collect: tuple[str, ...], script_path: str
    ) -> list[str]:
        namespace = self.isolation == "namespace"
        boot = {
            "ns": namespace,
            "mask": list(_MASKED_DIRS),
            "workdir": os.path.realpath(workdir),
            "wd_bytes": self.workdir_size_mb * 2**20,
            "wd_files": self.workdir_files,
            # CLOCK_MONOTONIC is the same in the namespaces: the run's wall clock starts here,
            # as it does without them
            "deadline": time.monotonic() + self.wall_seconds,
            "collect": list(collect),
            "read_bytes": self.max_output_bytes + 1,
            "status": _STATUS,
            "rlimits": self._rlimits(),
            "uid": uid,
            "seccomp": self._seccomp.hex() if self._seccomp else "",
        }
        cmd = [self.python, "-I", "-S", "-B", "-c", _BOOT, json.dumps(boot), script_path]
        if namespace:
            cmd = _UNSHARE + ["--"] + cmd
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
        # the namespace's init reads the collect names too: check them before anything runs
        if _STATUS in [_plain_name(name) for name in (*files, *collect)]:
            raise ValueError(f"{_STATUS} is the sandbox's own file name")
        for name, text in {**files, "main.py": script}.items():
            path = os.path.join(workdir, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o644)
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700 if uid is not None else 0o755)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONHASHSEED": "0"}
        namespace = self.isolation == "namespace"
        # with namespaces the init stops the program at the wall clock (and then still copies
        # the files out and reports): this process's kill is only the backstop
        limit = self.wall_seconds + (_BACKSTOP_S if namespace else 0.0)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                self._command(uid, workdir, collect, "main.py"),
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            try:
                finished = _wait(proc, limit)
            finally:
                _kill_session(proc)
            stdout, stderr = (self._read_capped(f) for f in (out, err))
        if namespace:
            res = self._reported(workdir, proc.returncode, finished, collect, stderr)
        else:
            res = SandboxResult(
                proc.returncode, timed_out=not finished, files=self._collect(workdir, collect)
            )
        res.stdout, res.stderr = stdout, stderr
        if res.workdir_full:  # after the cut of stderr, so that the line is always there
            sep = "" if not stderr or stderr.endswith("\n") else "\n"
            res.stderr += (
                f"{sep}sandbox: the working directory is full (workdir_size_mb="
                f"{self.workdir_size_mb}, workdir_files={self.workdir_files}): writes failed "
                "with ENOSPC\n"
            )
        res.duration_s = time.monotonic() - start
        return res

    def _reported(
        self,
        workdir: str,
        code: int | None,
        finished: bool,
        collect: tuple[str, ...],
        stderr: str,
    ) -> SandboxResult:
        """The result of a namespace run, from what its init reported."""
        report = _read_report(os.path.join(workdir, _STATUS))
        if report is None:
            # the init did not get to its report, so the files it would have copied out are not
            # there (the host dir still holds the given ones): nothing is read back
            if code is not None and code > 128:
                code = 128 - code  # unshare passes on the init's 128 + signum
            if not finished:  # the backstop killed it: the machine is too loaded, or init hung
                return SandboxResult(code, timed_out=True)
            lines = stderr.strip().splitlines()
            why = f": {lines[-1][:200]}" if lines and lines[-1].startswith("sandbox:") else ""
            return SandboxResult(code, error=f"the sandbox's init exited {code} unreported{why}")
        return SandboxResult(
            report["returncode"],
            timed_out=bool(report["timed_out"]) or not finished,
            files=self._collect(workdir, collect),
            workdir_full=bool(report["workdir_full"]),
        )

    def _collect(self, workdir: str, collect: tuple[str, ...]) -> dict[str, str]:
        got = {}
        for name in collect:
            text = _read_file_safely(os.path.join(workdir, name), self.max_output_bytes)
            if text is not None:
                got[name] = text
        return got

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


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log ``message`` once per process (every Sandbox of a run would repeat it)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


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
            cmd = _UNSHARE + ["true"]  # the very flags of a run (--mount-proc included)
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


def _read_report(path: str) -> dict | None:
    """The namespace init's status file (None: missing or not what the init writes)."""
    text = _read_file_safely(path, 4096)
    try:
        report = json.loads(text) if text is not None else None
    except ValueError:
        return None
    if not isinstance(report, dict) or not isinstance(report.get("returncode"), int):
        return None
    if not all(isinstance(report.get(key), bool) for key in ("timed_out", "workdir_full")):
        return None
    return report


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
