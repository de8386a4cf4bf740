"""The run summary (agentrl/summary.py): the test-split command reproduces the run's env as an
evaluate.py suite, the success line reads the validations right, and the lines name the files."""

from __future__ import annotations

import logging
import shlex
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from agentrl.summary import (
    RunSummary,
    duration,
    evaluate_command,
    hydra_value,
    success_line,
    suite_overrides,
)
from tests.conftest import CONF

RAW = {"resolve": False}


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def env_of(*overrides: str) -> dict:
    return OmegaConf.to_container(compose("train", overrides=list(overrides)).env, **RAW)


@pytest.mark.parametrize(
    "choice,overrides",
    [
        ("toolcalc", []),
        # the README's SmolLM2 test command: suites.toolcalc.max_ops=3 ...left_to_right=false
        ("toolcalc", ["env.max_ops=3", "env.left_to_right=false"]),
        ("webnav", ["env=webnav", "env.buy_prob=0", "env.max_turns=6"]),
        ("reasoning_gym", ["env=reasoning_gym", "env.system_prompt='Use calc, then answer.'"]),
        # a dataset config dict, added to the default {}
        ("reasoning_gym", ["experiment=reasoning_gym_grpo"]),
        ("external", ["env=external", "env.command='python examples/a.py --x \"y z\"'"]),
        ("webnav", ["experiment=webnav_grpo"]),
    ],
)
def test_the_command_gives_evaluate_py_the_run_env_as_its_only_suite(hydra_conf, choice, overrides):
    run_env = env_of(*overrides)
    suites = OmegaConf.to_container(compose("evaluate").suites, **RAW)
    command = evaluate_command("outputs/a b", choice, run_env, env_of(f"env={choice}"), suites)
    words = shlex.split(command)
    assert words[:3] == ["python", "evaluate.py", "run_dir=outputs/a b"]
    # what evaluate.py composes from those words is the run's env, and nothing else
    evaluated = compose("evaluate", overrides=words[3:])
    assert OmegaConf.to_container(evaluated.suites, **RAW) == {choice: run_env}


def test_the_default_run_needs_no_suite_setting(hydra_conf):
    suites = OmegaConf.to_container(compose("evaluate").suites, **RAW)
    env = env_of("env=toolcalc")
    assert evaluate_command("out", "toolcalc", env, env, suites) == "python evaluate.py run_dir=out"


def test_overrides_add_change_and_remove_keys_at_any_depth():
    base = {"a": 1, "b": {"x": 1, "y": 2}, "c": {}, "d": [1]}
    run = {"a": 2, "b": {}, "c": {"z": 3}, "d": [1], "e": "new"}
    assert suite_overrides("s", run, base) == [
        "suites.s.a=2",
        "+suites.s.c.z=3",
        "+suites.s.e=new",
        "~suites.s.b.x",
        "~suites.s.b.y",
    ]


def test_hydra_values():
    assert [hydra_value(v) for v in (None, True, 3, 0.5, "abc", "a b", "null", 'say "x"')] == [
        "null",
        "true",
        "3",
        "0.5",
        "abc",
        '"a b"',
        '"null"',
        '"say \\"x\\""',
    ]
    assert hydra_value(["+", "-"]) == '["+","-"]'
    assert hydra_value({"a": 1, "b": [2]}) == "{a:1,b:[2]}"


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
        # no Hydra run here: the plain command
        "  next, the test split: python evaluate.py run_dir=run",
    ]
    caplog.clear()
    summary.teardown(trainer, None, "validate")
    assert not [r for r in caplog.records if r.name == "agentrl.summary"]
