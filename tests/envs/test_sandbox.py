"""The sandbox against hostile programs: each is contained, reported as a failed run, and leaves
no process, file or temporary directory behind; the test process itself is unharmed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from agentrl.envs.sandbox import Sandbox, namespaces_available

UID_BASE = 300000  # apart from the ids a concurrent training run may use
NS, WHY = namespaces_available()
needs_ns = pytest.mark.skipif(not NS, reason=f"namespace isolation unavailable: {WHY}")


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
        uid_base=UID_BASE,
        base_dir=str(base),
    )


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


def test_infinite_loop_hits_the_cpu_limit(box, clean):
    start = time.monotonic()
    res = box.run("while True:\n    pass\n")
    assert res.status in ("SIGXCPU", "SIGKILL", "timeout")
    assert time.monotonic() - start < box.wall_seconds + 2


def test_a_sleeping_program_is_killed_at_the_wall_clock_timeout(box, clean):
    start = time.monotonic()
    res = box.run("import time\ntime.sleep(60)\n")
    assert res.timed_out and res.status == "timeout"
    assert time.monotonic() - start < box.wall_seconds + 2


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
