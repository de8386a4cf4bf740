"""env=webnav through the real training loop (slow tier): a 2-step smoke run, and the shop server
released on every exit path of ``agentrl.train.run`` (normal end, an exception, Ctrl-C)."""

from __future__ import annotations

import csv
import json
import signal
import socket

import pytest

from agentrl.envs.webnav.browser import Chromium
from agentrl.envs.webnav.server import ShopServer
from agentrl.module import AgentRLModule
from agentrl.train import run
from tests.conftest import require_chromium
from tests.envs.test_webnav_browser import assert_released


@pytest.fixture
def servers(monkeypatch):
    """Every ShopServer started during the test, with the port it listened on."""
    started: list[tuple[ShopServer, int]] = []
    original = ShopServer.start

    def start(self):
        out = original(self)
        started.append((self, self.port))
        return out

    monkeypatch.setattr(ShopServer, "start", start)
    return started


def assert_all_closed(started) -> None:
    assert started, "no shop server was started"
    for server, port in started:
        assert not server.running
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


@pytest.mark.slow
def test_webnav_smoke_run(make_cfg, tmp_path, servers):
    # short episodes keep the untrained policy's rollouts cheap
    run(
        make_cfg(
            "env=webnav", "debug=smoke", "env.num_train=50", "env.num_val=10", "env.max_turns=4"
        )
    )
    assert_all_closed(servers)
    run_dir = tmp_path / "run"
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/success_rate") for r in rows)
    assert any(r.get("rollout/turns_mean") for r in rows)
    assert all(
        not r.get("rollout/failed_episodes") or float(r["rollout/failed_episodes"]) == 0
        for r in rows
    )
    sample = json.loads((run_dir / "samples" / "train.jsonl").read_text().splitlines()[0])
    assert sample["turns"] and sample["prompt"].startswith(("Find the price", "Buy the"))


@pytest.fixture
def browsers(monkeypatch):
    """(profile dir, pid) of every Chromium started during the test."""
    started: list[tuple[str, int]] = []
    original = Chromium.start

    def start(self):
        out = original(self)
        started.append((self.profile, self.proc.pid))
        return out

    monkeypatch.setattr(Chromium, "start", start)
    return started


@pytest.mark.slow
@pytest.mark.parametrize(
    ("exc", "backend"),
    [
        (RuntimeError("simulated crash"), "text"),
        (KeyboardInterrupt(), "text"),
        (KeyboardInterrupt(), "browser"),
    ],
)
def test_resources_released_when_training_dies(
    make_cfg, servers, browsers, monkeypatch, exc, backend
):
    if backend == "browser":
        require_chromium()

    def crash(self, batch, batch_idx):
        raise exc

    monkeypatch.setattr(AgentRLModule, "training_step", crash)
    cfg = make_cfg(
        "env=webnav",
        "debug=smoke",
        "env.num_train=20",
        "env.num_val=4",
        "env.max_turns=2",
        f"env.backend={backend}",
        "warmstart.enabled=false",
        # the server starts with the first episode: the validation before training
        "validate_before_training=true",
    )
    handler = signal.getsignal(signal.SIGINT)
    try:
        # Lightning turns Ctrl-C into a graceful shutdown and sys.exit(1)
        with pytest.raises((RuntimeError, SystemExit)):
            run(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert_all_closed(servers)
    if backend == "browser":
        assert browsers
        for info in browsers:
            assert_released(info)
