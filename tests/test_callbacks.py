"""TrajectoryWriter sends its samples to every tracking logger, offline, and never fails a run.

No training run: the callback hooks are called with a stand-in trainer (its ``loggers`` built from
the composed config) and module (``rl_step``, ``last_samples``); each backend's records are read
back with its own reader.
"""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentrl.callbacks import SAMPLE_COLUMNS, TrajectoryWriter, turns_text
from agentrl.types import Task, Trajectory, Turn
from agentrl.utils.instantiate import instantiate
from tests.test_loggers import read_wandb_records


def traj(i: int) -> Trajectory:
    return Trajectory(
        task=Task(id=f"toolcalc/train/{i}", prompt=f"What is {i} + 1?", answer=i + 1),
        token_ids=[1, 2, 3],
        loss_mask=[0, 1, 0],
        logprobs=[0.0, -0.1, 0.0],
        prompt_len=1,
        turns=[
            Turn("calc(1+1)", "2", 0.0, (1, 2), {"tool": "calc"}),
            Turn(f"answer {i + 1}", "", 1.0, (2, 3)),
        ],
        reward=1.0 + i,
        success=i % 2 == 0,
    )


def module(step: int = 1, n: int = 3):
    return SimpleNamespace(
        rl_step=step,
        last_samples=[traj(i) for i in range(n)],
        last_val_samples=[traj(10 + i) for i in range(n)],
    )


def trainer_with(*loggers, checkpoint=None):
    return SimpleNamespace(
        loggers=list(loggers),
        sanity_checking=False,
        checkpoint_callback=SimpleNamespace(
            best_model_path=str(checkpoint or ""), last_model_path=""
        ),
    )


def writer(tmp_path, **kwargs) -> TrajectoryWriter:
    return TrajectoryWriter(dirpath=str(tmp_path / "run" / "samples"), every_n_steps=10, **kwargs)


def build(cfg, name: str):
    return instantiate(cfg.logger[name], f"logger.{name}")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)


def test_turns_text_is_readable():
    rec = traj(0).to_record()
    text = turns_text(rec["turns"])
    assert "[turn 1] action:\ncalc(1+1)" in text
    assert "[turn 1] observation:\n2" in text
    assert "[turn 2] action:\nanswer 1" in text


def test_wandb_receives_a_table_of_the_samples(make_cfg, tmp_path, offline_wandb):
    import wandb

    cfg = make_cfg("logger=wandb", "debug=smoke")
    logger = build(cfg, "wandb")
    cb = writer(tmp_path)
    try:
        cb.on_train_batch_end(trainer_with(logger), module(step=1), None, None, 0)
        cb.on_validation_end(trainer_with(logger), module(step=1))
    finally:
        logger.experiment.finish()
        wandb.teardown()
    assert cb.tracker_errors == {}
    (run_dir,) = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*"))
    (table_file,) = glob.glob(f"{run_dir}/files/media/table/samples/train_*.table.json")
    table = json.loads(Path(table_file).read_text())
    assert table["columns"] == SAMPLE_COLUMNS
    assert [row[1] for row in table["data"]] == [f"toolcalc/train/{i}" for i in range(3)]
    assert table["data"][0][0] == 1
    assert table["data"][0][2] == "What is 0 + 1?"
    assert "calc(1+1)" in table["data"][0][3]
    assert [row[4] for row in table["data"]] == [1.0, 2.0, 3.0]
    assert [row[5] for row in table["data"]] == [True, False, True]
    assert glob.glob(f"{run_dir}/files/media/table/samples/val_*.table.json")
    (run_file,) = glob.glob(f"{run_dir}/run-*.wandb")
    keys = {
        i.key or "/".join(i.nested_key)
        for r in read_wandb_records(Path(run_file))
        if r.WhichOneof("record_type") == "history"
        for i in r.history.item
    }
    # the history rows point at the table files (samples/train/_type = table-file, path...)
    assert {"samples/train/_type", "samples/val/_type"} <= keys


def test_mlflow_receives_the_jsonl_as_an_artifact(make_cfg, tmp_path, local_mlflow):
    from mlflow.tracking import MlflowClient

    cfg = make_cfg("logger=mlflow", "debug=smoke")
    logger = build(cfg, "mlflow")
    cb = writer(tmp_path)
    cb.on_train_batch_end(trainer_with(logger), module(step=10), None, None, 0)
    cb.on_validation_end(trainer_with(logger), module(step=10))
    logger.finalize("success")
    assert cb.tracker_errors == {}
    client = MlflowClient(tracking_uri=cfg.logger.mlflow.tracking_uri)
    files = {a.path for a in client.list_artifacts(logger.run_id, "samples")}
    assert files == {"samples/train.jsonl", "samples/val.jsonl"}
    local = client.download_artifacts(logger.run_id, "samples/train.jsonl", str(tmp_path / "dl"))
    rows = [json.loads(line) for line in Path(local).read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [f"toolcalc/train/{i}" for i in range(3)]
    assert all(r["rl_step"] == 10 for r in rows)
    # the artifacts stay in the run directory, beside mlflow.db
    stored = tmp_path / "run" / "mlartifacts"
    assert len(list(stored.glob("*/artifacts/samples/train.jsonl"))) == 1
    assert not (tmp_path / "mlruns").exists()


def test_tensorboard_receives_a_text_summary(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("logger=tensorboard", "debug=smoke")
    logger = build(cfg, "tensorboard")
    cb = writer(tmp_path)
    cb.on_train_batch_end(trainer_with(logger), module(step=20), None, None, 0)
    cb.on_train_batch_end(trainer_with(logger), module(step=21), None, None, 0)  # not a sample step
    logger.finalize("success")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("samples/train/text_summary")
    assert event.step == 20
    text = event.tensor_proto.string_val[0].decode()
    assert "toolcalc/train/2" in text and "calc(1+1)" in text


def test_every_tracker_at_once_and_the_jsonl(make_cfg, tmp_path, local_mlflow):
    cfg = make_cfg("logger=many", "debug=smoke")
    loggers = [build(cfg, name) for name in cfg.logger]
    cb = writer(tmp_path, num_samples=2)
    cb.on_train_batch_end(trainer_with(*loggers), module(step=1), None, None, 0)
    for lg in loggers:
        lg.finalize("success")
    assert cb.tracker_errors == {}
    lines = (tmp_path / "run" / "samples" / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == [
        "toolcalc/train/0",
        "toolcalc/train/1",
    ]


def test_a_failing_tracker_is_a_counted_warning(make_cfg, tmp_path, caplog):
    cfg = make_cfg("logger=tensorboard", "debug=smoke")
    logger = build(cfg, "tensorboard")

    def broken(*args, **kwargs):
        raise ConnectionError("tracker down")

    logger.experiment.add_text = broken
    cb = writer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="agentrl.callbacks"):
        cb.on_train_batch_end(trainer_with(logger), module(step=1), None, None, 0)
        cb.on_train_batch_end(trainer_with(logger), module(step=10), None, None, 0)
    assert cb.tracker_errors == {"tensorboard": 2}
    assert "tracker down" in caplog.text
    # the JSONL is still written
    lines = (tmp_path / "run" / "samples" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 6


def test_to_trackers_false_writes_the_jsonl_only(make_cfg, tmp_path):
    cfg = make_cfg("logger=tensorboard", "debug=smoke")
    logger = build(cfg, "tensorboard")
    logger.experiment.add_text = None  # would raise if called
    cb = writer(tmp_path, to_trackers=False)
    cb.on_train_batch_end(trainer_with(logger), module(step=1), None, None, 0)
    assert cb.tracker_errors == {}
    assert (tmp_path / "run" / "samples" / "train.jsonl").is_file()


def test_checkpoints_uploaded_only_when_asked(make_cfg, tmp_path, local_mlflow, offline_wandb):
    import wandb
    from mlflow.tracking import MlflowClient

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    cfg = make_cfg("logger=[mlflow,wandb]", "debug=smoke")
    ml, wb = build(cfg, "mlflow"), build(cfg, "wandb")
    try:
        writer(tmp_path).on_fit_end(trainer_with(ml, wb, checkpoint=ckpt), module())
        client = MlflowClient(tracking_uri=cfg.logger.mlflow.tracking_uri)
        assert client.list_artifacts(ml.run_id, "checkpoints") == []
        cb = writer(tmp_path, log_checkpoints=True)
        cb.on_fit_end(trainer_with(ml, wb, checkpoint=ckpt), module())
        assert cb.tracker_errors == {}
        assert [a.path for a in client.list_artifacts(ml.run_id, "checkpoints")] == [
            "checkpoints/best.ckpt"
        ]
    finally:
        wb.experiment.finish()
        wandb.teardown()
    (run_file,) = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    artifacts = [
        r.artifact
        for r in read_wandb_records(Path(run_file))
        if r.WhichOneof("record_type") == "artifact"
    ]
    assert [(a.type, a.name) for a in artifacts] == [("model", f"model-{wb.experiment.id}")]
    assert [f.path for a in artifacts for f in a.manifest.contents] == ["best.ckpt"]
