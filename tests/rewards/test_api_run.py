"""reward=api in a real run: under the default on_failure (drop) a run survives every fault of
the service, each counted; the key never reaches a file or a log; a service that stays down
under on_failure=stop ends the run cleanly with its last checkpoint intact, and it resumes."""

from __future__ import annotations

import csv
import logging
import socket

import lightning as L
import pytest
import torch

from agentrl.rewards.server import ScoringServer
from agentrl.train import main

SECRET = "sk-test-7f3a9c-do-not-leak"
SERVER: list[ScoringServer] = []


# one fault of the service per RL step (the last step's service is slow but in time)
FAULT_STEPS = ["timeout", "http500", "malformed", "refused", "reset", "slow"]
# a request held for the timeout fault is held this long (the server's close() drops it)
HOLD_S = 3600.0


def closed_port_url() -> str:
    """An address where nothing listens: the connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/score"


class OneFaultPerStep(L.Callback):
    """Before RL step i + 1 the service takes FAULT_STEPS[i]. The client gives up on a request
    after 2 s at the timeout step and after 60 s otherwise, so no healthy answer times out
    however loaded the machine (and no held one is ever answered)."""

    def __init__(self):
        self.refused = closed_port_url()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        srv, reward = SERVER[0], pl_module.reward
        fault = FAULT_STEPS[pl_module.rl_step]
        srv.fault = "none" if fault == "refused" else fault
        srv.delay = 0.2 if fault == "slow" else HOLD_S
        reward.url = self.refused if fault == "refused" else srv.url
        reward.timeout_s = 2.0 if fault == "timeout" else 60.0


@pytest.mark.slow
def test_default_policy_survives_every_service_fault_and_counts_it(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    with ScoringServer() as srv:
        SERVER[:] = [srv]
        cfg = make_cfg(
            "debug=smoke",
            "warmstart.enabled=false",
            "validate_before_training=false",
            f"data.steps={len(FAULT_STEPS)}",
            f"trainer.val_check_interval={len(FAULT_STEPS)}",
            "callbacks.export=null",
            # short episodes: the rollouts are not what is tested
            "algorithm.group_size=2",
            "env.max_turns=3",
            "env.max_action_tokens=8",
            "reward=api",
            f"reward.url={srv.url}",
            # one request per step, retried once
            "reward.batch_size=1000",
            "reward.max_retries=1",
            "reward.backoff_s=0.01",
            "+callbacks.faults._target_=tests.rewards.test_api_run.OneFaultPerStep",
        )
        assert cfg.reward.on_failure == "drop"  # the default policy
        main(cfg)  # returns: the run survived
    run_dir = tmp_path / "run"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["agentrl"][
        "rl_step"
    ] == len(FAULT_STEPS)
    with open(run_dir / "metrics.csv") as f:
        rows = {
            int(float(r["train/rl_step"])): {k: float(v) for k, v in r.items() if v}
            for r in csv.DictReader(f)
            if r.get("reward/api_failed_episodes")
        }
    n = cfg.data.tasks_per_step * cfg.algorithm.group_size  # episodes per step
    assert sorted(rows) == list(range(1, len(FAULT_STEPS) + 1))
    for step, fault in enumerate(FAULT_STEPS, 1):
        row = rows[step]
        if fault == "slow":  # slow but in time: scored, nothing failed or retried
            assert row["reward/api_failed_episodes"] == row["reward/api_retries"] == 0, row
            assert row["rollout/reward_errors"] == 0 and "rollout/reward_mean" in row
        else:  # every episode of the step failed, counted, after one retry
            assert row["reward/api_failed_episodes"] == n, (fault, row)
            assert row["rollout/reward_errors"] == n and row["rollout/failed_episodes"] >= n
            assert row["reward/api_retries"] == 1, (fault, row)
    faulty = len(FAULT_STEPS) - 1
    assert rows[len(FAULT_STEPS)]["rollout/failed_episodes_total"] >= faulty * n


class ServiceGoesDown(L.Callback):
    """The scoring service starts answering HTTP 500 once RL step 2 is done (and checkpointed)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.rl_step >= 2:
            SERVER[0].fault = "http500"


@pytest.mark.slow
def test_api_run_hides_the_key_and_stops_cleanly(make_cfg, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AGENTRL_REWARD_API_KEY", SECRET)
    monkeypatch.setenv("AGENTRL_EXTRA_TARGETS", "tests.")
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    with ScoringServer(require_key=SECRET) as srv:
        SERVER[:] = [srv]
        cfg = make_cfg(
            "debug=smoke",
            "validate_before_training=false",
            "data.steps=4",
            "reward=api",
            f"reward.url={srv.url}",
            "reward.backoff_s=0.01",
            "reward.on_failure=stop",
            "+callbacks.down._target_=tests.rewards.test_api_run.ServiceGoesDown",
        )
        with pytest.raises(SystemExit) as exc:
            main(cfg)
        assert exc.value.code == 3
        assert srv.stats["items"] > 0 and srv.auth_seen[0] == f"Bearer {SECRET}"
    err = capsys.readouterr().err
    assert "stopped: reward service" in err and "HTTP 500" in err
    # the checkpoint of step 2 is intact
    assert torch.load(last, weights_only=True)["agentrl"]["rl_step"] == 2

    # the service is back: the same command resumes from step 2 and finishes
    with ScoringServer(require_key=SECRET) as srv:
        cfg = make_cfg("debug=smoke", "data.steps=4", "reward=api", f"reward.url={srv.url}")
        main(cfg)
    assert torch.load(last, weights_only=True)["agentrl"]["rl_step"] == 4

    out = capsys.readouterr()
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
    assert SECRET not in out.out + out.err + caplog.text
    assert "AGENTRL_REWARD_API_KEY" in (run_dir / "hparams.yaml").read_text()
