"""The run summary (agentrl/summary.py): the success line reads the validations right, and the
lines name the files and the test-split command."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from agentrl.summary import RunSummary, duration, success_line


def val(step, success, fit=True):
    return {"rl_step": step, "success": success, "fit": fit}


def test_success_line_start_end_and_the_first_best():
    line = success_line([val(0, 0.2, fit=False), val(10, 0.5), val(20, 0.5), val(30, 0.4)])
    assert line == (
        "held-out success: 20.0% at the start of RL, 40.0% at the end (RL step 30), "
        "best 50.0% (RL step 10)"
    )


def test_success_line_without_the_validation_before_rl():
    line = success_line([val(10, 0.25)])
    assert "not measured at the start of RL (validate_before_training=false)" in line
    assert "25.0% at the end (RL step 10), best 25.0% (RL step 10)" in line
    assert success_line([]) == "held-out success: no validation ran"


def test_durations():
    assert [duration(s) for s in (6.4, 245, 3723)] == ["6s", "4m 05s", "1h 02m 03s"]


def fake_trainer(fn: str, success: float, step: int, **extra):
    from lightning.pytorch.trainer.states import TrainerFn

    return SimpleNamespace(
        sanity_checking=False,
        callback_metrics={"val/success_rate": success},
        state=SimpleNamespace(fn=TrainerFn(fn)),
        global_step=step,
        **extra,
    )


def test_validations_are_recorded_and_survive_a_checkpoint():
    summary = RunSummary(run_dir="run")
    summary.on_validation_end(fake_trainer("validate", 0.1, 0), SimpleNamespace(rl_step=0))
    summary.on_validation_end(fake_trainer("fit", 0.3, 5), SimpleNamespace(rl_step=2))
    resumed = RunSummary(run_dir="run")
    resumed.load_state_dict(summary.state_dict())
    assert resumed.validations == [val(0, 0.1, fit=False), val(2, 0.3)]


def test_the_lines_name_what_the_run_wrote(tmp_path, monkeypatch, caplog):
    from agentrl.callbacks import ExportPolicy, LearningCurve, TrajectoryWriter

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_text("x")
    (run / "export").mkdir()
    (run / "curve.png").write_text("x")
    (run / "samples").mkdir()
    (run / "samples" / "val.jsonl").write_text("{}")
    callbacks = [
        TrajectoryWriter(str(run / "samples")),
        LearningCurve(str(run / "curve.png")),
        ExportPolicy(str(run / "export")),
    ]
    trainer = fake_trainer(
        "fit",
        0.5,
        3,
        checkpoint_callback=SimpleNamespace(dirpath=str(run / "checkpoints")),
        callbacks=callbacks,
        is_global_zero=True,
    )
    summary = RunSummary(run_dir=str(run))
    summary.on_validation_end(trainer, SimpleNamespace(rl_step=3))
    with caplog.at_level(logging.INFO, logger="agentrl.summary"):
        summary.teardown(trainer, None, "fit")
    (record,) = [r for r in caplog.records if r.name == "agentrl.summary"]
    lines = record.getMessage().splitlines()
    assert lines[0].startswith("run finished in ") and lines[0].endswith(": run")
    assert lines[1:] == [
        "  held-out success: not measured at the start of RL (validate_before_training=false), "
        "50.0% at the end (RL step 3), best 50.0% (RL step 3)",
        "  checkpoints: run/checkpoints (last.ckpt)",
        "  exported policy (transformers): run/export",
        "  learning curve: run/curve.png",
        "  sample trajectories: run/samples (val.jsonl)",
        # evaluate.py evaluates a run dir on the run's own env (tests/evaluation/test_run_env.py)
        "  next, the test split: python evaluate.py run_dir=run",
    ]
    caplog.clear()
    summary.teardown(trainer, None, "validate")
    assert not [r for r in caplog.records if r.name == "agentrl.summary"]
