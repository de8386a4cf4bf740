"""Each tracking logger, built from the composed config, writes real records offline.

No training run: the Lightning logger API is driven directly (``log_hyperparams`` with the real
config, as ``agentrl.train.run`` does, then ``log_metrics`` at a few steps), and the records are
read back with each backend's own reader.
"""

from __future__ import annotations

import csv
import glob
import json
import struct
from pathlib import Path

import pytest
import yaml

from agentrl.loggers import ResumableCSVLogger
from agentrl.train import build_trainer
from agentrl.utils.instantiate import instantiate, to_container

STEPS = [0, 1, 2]


def metrics_at(step: int) -> dict[str, float]:
    return {"loss/policy": 1.0 / (step + 1), "env/success_rate": 0.25 * step}


def drive(logger, cfg) -> None:
    """What a run does to a logger: the config once, then metrics at each step, then finalize."""
    logger.log_hyperparams(to_container(cfg))
    for step in STEPS:
        logger.log_metrics(metrics_at(step), step=step)
    logger.save()
    logger.finalize("success")


def build(cfg, name: str):
    return instantiate(cfg.logger[name], f"logger.{name}")


def test_tensorboard_writes_event_files(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("logger=tensorboard", "debug=smoke")
    drive(build(cfg, "tensorboard"), cfg)
    log_dir = tmp_path / "run" / "tensorboard"
    assert glob.glob(str(log_dir / "events.out.tfevents.*"))
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    for key in ("loss/policy", "env/success_rate"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == STEPS
        assert [e.value for e in events] == pytest.approx([metrics_at(s)[key] for s in STEPS])
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert hparams["algorithm"]["group_size"] == cfg.algorithm.group_size


def test_mlflow_writes_a_sqlite_store_in_the_run_dir(make_cfg, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # anything MLflow might drop in the working directory stays here
    cfg = make_cfg("logger=mlflow", "debug=smoke")
    uri = cfg.logger.mlflow.tracking_uri
    assert uri == f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    drive(build(cfg, "mlflow"), cfg)
    assert (tmp_path / "run" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("agentrl")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["algorithm/group_size"] == str(cfg.algorithm.group_size)
    for key in ("loss/policy", "env/success_rate"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == STEPS
        assert [m.value for m in history] == pytest.approx([metrics_at(s)[key] for s in STEPS])


def read_wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of chunks,
    each chunk with a 7-byte header: crc32 (4), length (2), type (1: full, 2: first, 3: middle,
    4: last)); the file starts with a 7-byte header ``:W&B`` + magic + version."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a .wandb file"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block tail too short for a header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(records) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                    for i in r.history.item
                }
            )
    return rows


def wandb_config(records) -> dict:
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            out.update({i.key: json.loads(i.value_json) for i in r.config.update})
    return out


def test_wandb_is_offline_by_default_and_writes_its_history(make_cfg, tmp_path, monkeypatch):
    import wandb

    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("logger=wandb", "debug=smoke")
    assert cfg.logger.wandb.mode == "offline"
    logger = build(cfg, "wandb")
    try:
        drive(logger, cfg)
    finally:
        logger.experiment.finish()
        # the wandb-core service writes the .wandb file asynchronously; stopping it flushes it
        wandb.teardown()
    (run_file,) = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = read_wandb_records(Path(run_file))
    history = wandb_history(records)
    assert [h["trainer/global_step"] for h in history] == STEPS
    for key in ("loss/policy", "env/success_rate"):
        assert [h[key] for h in history] == pytest.approx([metrics_at(s)[key] for s in STEPS])
    assert wandb_config(records)["algorithm"]["group_size"] == cfg.algorithm.group_size


def test_many_is_csv_tensorboard_and_mlflow(make_cfg, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg("logger=many", "debug=smoke")
    assert set(cfg.logger) == {"csv", "tensorboard", "mlflow"}
    trainer = build_trainer(cfg)
    kinds = {type(lg) for lg in trainer.loggers}
    assert kinds == {ResumableCSVLogger, TensorBoardLogger, MLFlowLogger}
    for lg in trainer.loggers:
        drive(lg, cfg)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss/policy"]) for r in rows] == pytest.approx(
        [metrics_at(s)["loss/policy"] for s in STEPS]
    )
    assert glob.glob(str(tmp_path / "run" / "tensorboard" / "events.out.tfevents.*"))
    assert (tmp_path / "run" / "mlflow.db").is_file()
