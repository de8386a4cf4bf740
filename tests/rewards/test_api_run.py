"""reward=api in a real run: the key never reaches a file or a log; a service that stays down
under on_failure=stop ends the run cleanly with its last checkpoint intact, and it resumes."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from agentrl.rewards.server import ScoringServer
from agentrl.train import main

SECRET = "sk-test-7f3a9c-do-not-leak"
SERVER: list[ScoringServer] = []


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
