"""The sandbox against hostile programs: each is contained, reported as a failed run, and leaves
no process, file or temporary directory behind; the test process itself is unharmed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psutil
import pytest

from agentrl.envs.sandbox import Sandbox, namespaces_available
from tests.conftest import require_or_skip

UID_BASE = 300000  # apart from the ids a concurrent training run may use
NS, WHY = namespaces_available()
# the tests of what only the namespaces give: skipped without root (failed under
# AGENTRL_REQUIRE_ALL=1, as CI runs), failed as root without them (a machine where unshare
# stopped working must not pass by skipping)
needs_ns = pytest.mark.usefixtures("ns")


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Sandbox:
    base = tmp_path_factory.mktemp("sbx")
    return Sandbox(
        cpu_seconds=1,
        wall_seconds=2,
        memory_mb=128,
        file_size_kb=64,
        max_processes=8,
        max_output_bytes=1000,
        workdir_size_mb=2,
        workdir_files=100,
        uid_base=UID_BASE,
        base_dir=str(base),
    )


@pytest.fixture
def ns(box):
    if os.geteuid() != 0:
        require_or_skip(f"namespace isolation unavailable: {WHY}")
    assert NS and box.isolation == "namespace", f"running as root without namespaces: {WHY}"


def strays() -> list[str]:
    """Processes left by sandboxed programs: children of this process, or any process of a
    sandbox uid. Polls briefly: the kernel tears a PID namespace down asynchronously."""
    found: list[str] = []
    for _ in range(20):
        found = [f"child {p.pid}" for p in psutil.Process().children(recursive=True)]
        for p in psutil.process_iter(["uids", "pid"]):
            uids = p.info["uids"]
            if uids is not None and UID_BASE <= uids.real < UID_BASE + 65536:
                found.append(f"uid {uids.real} pid {p.info['pid']}")
        if not found:
            return []
        time.sleep(0.1)
    return found


@pytest.fixture
def clean(box):
    """Checks after the test that nothing was left: processes, working directories."""
    yield
    assert strays() == []
    assert os.listdir(box.base_dir) == []


def test_a_plain_program_runs_and_its_output_comes_back(box, clean):
    res = box.run("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n")
    assert res.status == "ok" and res.returncode == 0
    assert res.stdout == "hello\n" and res.stderr == "oops\n"
    assert not res.timed_out and res.error is None


def test_files_are_written_and_read_back(box, clean):
    res = box.run(
        "open('out.txt', 'w').write(open('in.txt').read().upper())",
        files={"in.txt": "abc"},
        collect=("out.txt", "missing.txt"),
    )
    assert res.status == "ok" and res.files == {"out.txt": "ABC"}


# a killed program returns well within this (its limits are 1-2 s), however loaded the machine;
# the programs below would run for ever, or 120 s
KILLED_WITHIN_S = 60


def test_infinite_loop_hits_the_cpu_limit(box, clean):
    start = time.monotonic()
    res = box.run("while True:\n    pass\n")
    assert res.status in ("SIGXCPU", "SIGKILL", "timeout")
    assert time.monotonic() - start < KILLED_WITHIN_S


def test_a_sleeping_program_is_killed_at_the_wall_clock_timeout(box, clean):
    start = time.monotonic()
    res = box.run("import time\ntime.sleep(120)\n")
    assert res.timed_out and res.status == "timeout"
    assert time.monotonic() - start < KILLED_WITHIN_S


@needs_ns  # without a uid of its own, RLIMIT_NPROC does not hold a fork bomb run as root
def test_fork_bomb_is_contained(box, clean):
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    res = box.run(bomb)
    assert res.status != "ok"
    assert psutil.Process().is_running()


def test_memory_bomb_fails_without_hurting_the_parent(box, clean):
    res = box.run("x = bytearray(10**9)\n")
    assert res.status != "ok" and "MemoryError" in res.stderr
    res = box.run("xs = []\nwhile True:\n    xs.append(' ' * 10**6)\n")
    assert res.status != "ok"


def test_output_flood_is_truncated(box, clean):
    res = box.run("while True:\n    print('x' * 100)\n")
    assert res.status != "ok"
    assert res.stdout.endswith("[output truncated]")
    assert len(res.stdout) <= box.max_output_bytes + 40


@needs_ns
def test_writes_outside_the_working_directory_do_not_land(box, clean, tmp_path):
    name = f"agentrl-escape-{uuid.uuid4().hex}"
    target = tmp_path / "escape.txt"
    prog = (
        "import os\n"
        f"for p in ['/tmp/{name}', '/var/tmp/{name}', '/dev/shm/{name}', '../{name}', "
        f"'../../{name}', {str(target)!r}, '/{name}']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        print('wrote', p)\n"
        "    except OSError as e:\n"
        "        print('refused', p, type(e).__name__)\n"
    )
    res = box.run(prog)
    assert res.status == "ok", res.stderr
    for d in ("/tmp", "/var/tmp", "/dev/shm", "/", box.base_dir, os.path.dirname(box.base_dir)):
        assert not os.path.exists(os.path.join(d, name)), d
    assert not target.exists()
    assert f"refused {target}" in res.stdout


@needs_ns
def test_no_network_even_below_the_python_guard(box, clean):
    """A listening socket of the parent on 127.0.0.1 is unreachable: the program has its own
    network namespace, even when it calls libc's connect() directly through ctypes (which the
    audit-hook guard cannot see)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    prog = (
        "import ctypes, socket, struct\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.socket(2, 1, 0)\n"
        f"addr = struct.pack('!HH4s8x', 2, {port}, bytes([127, 0, 0, 1]))\n"
        "addr = struct.pack('=H', 2) + addr[2:]\n"
        "rc = libc.connect(fd, addr, len(addr))\n"
        "print('connect', rc, ctypes.get_errno())\n"
        "print('ifaces', [n for _, n in socket.if_nameindex()])\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "    print('python connected')\n"
        "except OSError as e:\n"
        "    print('python refused', type(e).__name__)\n"
    )
    try:
        res = box.run(prog)
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()
    assert "connect -1" in res.stdout, res.stdout + res.stderr
    assert "ifaces ['lo']" in res.stdout
    assert "python refused PermissionError" in res.stdout


def test_python_socket_calls_are_refused(box, clean):
    res = box.run("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n")
    assert res.status == "exit 1" and "network access is disabled" in res.stderr


def test_environment_secrets_are_not_visible(box, clean, monkeypatch):
    monkeypatch.setenv("AGENTRL_FAKE_SECRET", "hunter2-secret")
    # without namespaces the program runs as this uid and could read /proc/<pid>/environ
    pids = f"(os.getppid(), {os.getpid()})" if NS else "()"
    prog = (
        "import os\n"
        "print(sorted(os.environ))\n"
        f"for pid in {pids}:\n"
        "    try:\n"
        "        print(open('/proc/%d/environ' % pid, 'rb').read())\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
    )
    res = box.run(prog)
    assert "hunter2" not in res.stdout + res.stderr
    assert "AGENTRL_FAKE_SECRET" not in res.stdout
    assert res.stdout.splitlines()[0] == str(["HOME", "LANG", "PATH", "PYTHONHASHSEED"])


@needs_ns
def test_signalling_the_parent_is_contained(box, clean):
    me = os.getpid()
    prog = (
        "import os, signal\n"
        f"for pid in (os.getppid(), {me}, {os.getppid()}):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        print('killed', pid, flush=True)\n"
        "    except (OSError, ValueError) as e:\n"
        "        print('refused', pid, type(e).__name__, flush=True)\n"
        "os.kill(0, signal.SIGKILL)\n"
    )
    res = box.run(prog)
    assert f"refused {me}" in res.stdout
    assert res.status == "SIGKILL"  # it could only kill its own process group
    assert psutil.Process(me).is_running()


@needs_ns
def test_a_daemon_that_leaves_the_session_is_killed_with_the_namespace(box, clean):
    prog = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('main done')\n"
    )
    res = box.run(prog)
    assert res.status == "ok" and res.stdout == "main done\n"


@needs_ns
def test_the_program_runs_unprivileged(box, clean):
    res = box.run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n")
    uid, gid, groups = res.stdout.split(" ", 2)
    assert UID_BASE <= int(uid) < UID_BASE + 65536 and uid == gid and groups.strip() == "[]"


def test_a_sandbox_that_cannot_start_reports_instead_of_raising(tmp_path):
    box = Sandbox(python=str(tmp_path / "no-python"), wall_seconds=2, base_dir=str(tmp_path))
    res = box.run("print(1)")
    assert res.status != "ok"
    assert [p for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"isolation": "chroot"}, "isolation must be one of"),
        ({"memory_mb": 8}, "memory_mb must be >= 64"),
        ({"wall_seconds": 0}, "wall_seconds must be > 0"),
        ({"max_processes": 0}, "max_processes must be an int >= 1"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sandbox(**kwargs)


def test_workdirs_of_dead_processes_are_removed_by_the_next_sandbox(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"agentrl-sbx-{dead.pid}-abc"
    stale.mkdir()
    (stale / "main.py").write_text("x")
    mine = tmp_path / f"agentrl-sbx-{os.getpid()}-def"
    mine.mkdir()
    other = tmp_path / "unrelated"
    other.mkdir()
    Sandbox(base_dir=str(tmp_path), python="/usr/bin/python3")
    assert not stale.exists() and mine.exists() and other.exists()


@needs_ns
def test_a_running_program_dies_with_a_killed_parent(tmp_path):
    """A training process killed by SIGKILL runs no cleanup; its sandboxed program still dies."""
    code = (
        "import sys\n"
        "from agentrl.envs.sandbox import Sandbox\n"
        f"box = Sandbox(wall_seconds=60, uid_base={UID_BASE}, base_dir={str(tmp_path)!r})\n"
        "print('ready', flush=True)\n"
        "box.run('import time\\ntime.sleep(60)')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert parent.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not strays():
            time.sleep(0.1)
        assert strays(), "the sandboxed program did not start"
    finally:
        parent.kill()
        parent.wait()
    assert strays() == []


# ----------------------------------------------------------------- issue 21: what namespaces and
# limits alone left open (host /proc, Unix sockets, new namespaces, an unbounded working dir)
@needs_ns
def test_proc_shows_only_the_sandbox_s_own_processes(box, clean):
    """A secret on another process's command line (a trainer's flags) is not readable: the PID
    namespace has its own /proc, which lists the namespace's init and the program only."""
    secret = f"agentrl-cmdline-secret-{uuid.uuid4().hex}"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", secret])
    prog = (
        "import os\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "print('pids', len(pids), pids[:5])\n"
        "for p in pids:\n"
        "    try:\n"
        "        cmd = open('/proc/%d/cmdline' % p, 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if b'agentrl-cmdline-secret' in cmd:\n"
        "        print('leaked', p, cmd)\n"
        f"print('holder visible', os.path.exists('/proc/{holder.pid}/cmdline'))\n"
    )
    try:
        res = box.run(prog)
    finally:
        holder.kill()
        holder.wait()
    assert res.status == "ok", res.stderr
    assert secret not in res.stdout and "leaked" not in res.stdout
    count = int(res.stdout.split()[1])
    assert count <= 2, res.stdout  # the namespace's init and the program
    assert "holder visible False" in res.stdout


def _unix_dir(tmp_path) -> str:
    """A host directory outside the ones the sandbox masks (/tmp is masked with namespaces)."""
    parent = "/run" if os.access("/run", os.W_OK) else str(tmp_path)
    path = tempfile.mkdtemp(prefix="agentrl-unix-", dir=parent)
    os.chmod(path, 0o755)
    return path


def test_unix_sockets_on_the_host_file_system_are_unreachable(box, clean, tmp_path):
    """A listener on the host file system (a docker.sock, a database, the training process's own)
    is unreachable even through libc directly (ctypes, below the audit hook): socket(AF_UNIX) is
    refused by the seccomp filter, and so is a datagram socketpair (it could sendto any path)."""
    d = _unix_dir(tmp_path)
    stream_path, dgram_path = os.path.join(d, "s.sock"), os.path.join(d, "d.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    prog = (
        "import ctypes, socket, struct\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def sun(path):\n"
        "    return struct.pack('=H', 1) + path.encode() + b'\\0'\n"
        f"a, b = sun({stream_path!r}), sun({dgram_path!r})\n"
        "fd = libc.socket(1, 1, 0)\n"
        "print('socket', fd, ctypes.get_errno())\n"
        "if fd >= 0:\n"
        "    print('connect', libc.connect(fd, a, len(a)), ctypes.get_errno())\n"
        "sv = (ctypes.c_int * 2)()\n"
        "rc = libc.socketpair(1, 2 | 0x80000, 0, sv)\n"
        "print('dgram pair', rc, ctypes.get_errno())\n"
        "if rc == 0:\n"
        "    print('sendto', libc.sendto(sv[0], b'x', 1, 0, b, len(b)), ctypes.get_errno())\n"
        "print('stream pair', libc.socketpair(1, 1, 0, sv))\n"
        "try:\n"
        "    socket.socket(socket.AF_UNIX).connect(" + repr(stream_path) + ")\n"
        "    print('python connected')\n"
        "except OSError as e:\n"
        "    print('python refused', type(e).__name__)\n"
    )
    try:
        srv.bind(stream_path)
        srv.listen(1)
        srv.setblocking(False)
        dgram.bind(dgram_path)
        dgram.setblocking(False)
        for p in (stream_path, dgram_path):
            os.chmod(p, 0o777)
        res = box.run(prog)
        with pytest.raises(BlockingIOError):
            srv.accept()
        with pytest.raises(BlockingIOError):
            dgram.recv(16)
    finally:
        srv.close()
        dgram.close()
        shutil.rmtree(d, ignore_errors=True)
    assert res.status == "ok", res.stderr
    assert "socket -1 1\n" in res.stdout, res.stdout  # EPERM
    assert "dgram pair -1 1\n" in res.stdout, res.stdout
    assert "stream pair 0\n" in res.stdout  # multiprocessing's pipes still work
    assert "python refused PermissionError" in res.stdout


def test_the_program_cannot_create_namespaces(box, clean):
    """A user namespace would give the program every capability inside it (and a network
    namespace of its own, mounts, ...): unshare/clone with CLONE_NEW* flags fail with EPERM, also
    through ctypes and in programs it executes; clone3 (whose flags a filter cannot read) is
    ENOSYS, so libc falls back to clone."""
    prog = (
        "import ctypes, os, platform, subprocess\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for name, flags in [('user+net', 0x50000000), ('user', 0x10000000), ('net', 0x40000000),"
        " ('mount', 0x20000), ('pid', 0x20000000)]:\n"
        "    print('unshare', name, libc.unshare(flags), ctypes.get_errno())\n"
        "class Args(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_uint64) for n in ('flags', 'pidfd', 'child_tid',"
        " 'parent_tid', 'exit_signal', 'stack', 'stack_size', 'tls')]\n"
        "args = Args(flags=0x10000000, exit_signal=17)\n"
        "pid = libc.syscall(ctypes.c_long(435), ctypes.byref(args), ctypes.c_long(64))\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "print('clone3', pid, ctypes.get_errno())\n"
        "if pid > 0:\n"
        "    os.waitpid(pid, 0)\n"
        "if platform.machine() == 'x86_64':\n"
        "    z = ctypes.c_long(0)\n"
        "    pid = libc.syscall(ctypes.c_long(56), ctypes.c_long(0x10000000 | 17), z, z, z, z)\n"
        "    if pid == 0:\n"
        "        os._exit(0)\n"
        "    print('clone', pid, ctypes.get_errno())\n"
        "    if pid > 0:\n"
        "        os.waitpid(pid, 0)\n"
        "r = subprocess.run(['unshare', '--user', '--net', 'true'], capture_output=True)\n"
        "print('unshare(1)', r.returncode)\n"
    )
    res = box.run(prog)
    assert res.status == "ok", res.stderr
    for name in ("user+net", "user", "net", "mount", "pid"):
        assert f"unshare {name} -1 1\n" in res.stdout, res.stdout  # EPERM
    assert "clone3 -1 38\n" in res.stdout, res.stdout  # ENOSYS
    if "clone " in res.stdout:
        assert "clone -1 1\n" in res.stdout, res.stdout
    assert "unshare(1) 0" not in res.stdout


@needs_ns
def test_the_working_directory_has_a_size_limit(box, clean):
    """RLIMIT_FSIZE caps each file; the working directory is a tmpfs of ``workdir_size_mb``, so
    many files below that cap still stop at the limit, which the result reports."""
    prog = (
        "n = total = 0\n"
        "try:\n"
        "    for i in range(400):\n"  # 400 * 60 kB = 24 MB, each file below RLIMIT_FSIZE
        "        with open('f%d' % i, 'wb') as f:\n"
        "            f.write(b'x' * 60000)\n"
        "        n += 1\n"
        "        total += 60000\n"
        "except OSError as e:\n"
        "    print('stopped', e.errno)\n"
        "print('wrote', n, total)\n"
        "open('f0', 'w').close()\n"  # frees 60 kB
        "open('kept.txt', 'w').write('kept')\n"
    )
    res = box.run(prog, collect=("kept.txt",))
    assert "stopped 28" in res.stdout, res.stdout  # ENOSPC
    total = int(res.stdout.split()[-1])
    assert total <= box.workdir_size_mb * 2**20
    assert res.files == {"kept.txt": "kept"}


@needs_ns
def test_a_full_working_directory_is_reported(box, clean):
    prog = "for i in range(400):\n    open('f%d' % i, 'wb').write(b'x' * 60000)\n"
    res = box.run(prog)
    assert res.workdir_full and res.status == "workdir_full"
    assert "working directory" in res.stderr and "ENOSPC" in res.stderr, res.stderr


@needs_ns
def test_the_working_directory_has_a_file_count_limit(box, clean):
    prog = (
        "n = 0\n"
        "try:\n"
        "    for i in range(5000):\n"
        "        open('e%d' % i, 'w').close()\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('stopped', e.errno)\n"
        "print('made', n)\n"
    )
    res = box.run(prog)
    assert "stopped 28" in res.stdout, res.stdout
    assert int(res.stdout.split()[-1]) <= box.workdir_files
    assert res.workdir_full and res.status == "workdir_full"


def test_files_written_before_a_timeout_are_read_back(box, clean):
    """Partial results survive the wall-clock kill (codegen grades the tests that did run)."""
    prog = "open('out.txt', 'w').write('partial')\nimport time\ntime.sleep(60)\n"
    res = box.run(prog, collect=("out.txt",))
    assert res.timed_out and res.files == {"out.txt": "partial"}


def test_a_file_the_program_removed_is_not_read_back(box, clean):
    prog = "import os\nos.remove('in.txt')\nos.symlink('/etc/passwd', 'link.txt')\n"
    res = box.run(prog, files={"in.txt": "abc"}, collect=("in.txt", "link.txt"))
    assert res.status == "ok", res.stderr
    assert res.files == {}
