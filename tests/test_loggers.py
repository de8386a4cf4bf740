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

from agentrl.loggers import ResumableCSVLogger, ResumableMLFlowLogger, read_tracker_ids
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
    assert kinds == {ResumableCSVLogger, TensorBoardLogger, ResumableMLFlowLogger}
    assert issubclass(ResumableMLFlowLogger, MLFlowLogger)
    for lg in trainer.loggers:
        drive(lg, cfg)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss/policy"]) for r in rows] == pytest.approx(
        [metrics_at(s)["loss/policy"] for s in STEPS]
    )
    assert glob.glob(str(tmp_path / "run" / "tensorboard" / "events.out.tfevents.*"))
    assert (tmp_path / "run" / "mlflow.db").is_file()


# ----------------------------------------------------------------------------- resume
def test_mlflow_resumed_run_dir_continues_the_same_run(make_cfg, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg("logger=mlflow", "debug=smoke")
    first = build(cfg, "mlflow")
    assert first.resumed_id is None
    first.log_metrics({"loss/policy": 1.0}, step=0)
    first.finalize("failed")  # e.g. the job was preempted
    ids = read_tracker_ids(tmp_path / "run" / "tracker_ids.json")
    assert ids["mlflow"] == {"run_id": first.run_id, "tracking_uri": cfg.logger.mlflow.tracking_uri}

    second = build(cfg, "mlflow")  # the requeued job, same run directory
    assert second.resumed_id == first.run_id
    second.log_metrics({"loss/policy": 0.5}, step=1)
    second.finalize("success")
    assert second.run_id == first.run_id
    client = MlflowClient(tracking_uri=cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("agentrl").experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss/policy")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5)]

    other = build(make_cfg("logger=mlflow", "debug=smoke", run="other"), "mlflow")
    other.log_metrics({"loss/policy": 2.0}, step=0)
    assert other.run_id != first.run_id  # a new run directory is a new run


def test_mlflow_ignores_a_saved_id_of_another_store(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    ids = tmp_path / "run" / "tracker_ids.json"
    ids.parent.mkdir(parents=True)
    ids.write_text(json.dumps({"mlflow": {"run_id": "abc", "tracking_uri": "sqlite:///x.db"}}))
    logger = build(make_cfg("logger=mlflow", "debug=smoke"), "mlflow")
    logger.log_metrics({"loss/policy": 1.0}, step=0)
    assert logger.resumed_id is None and logger.run_id != "abc"
    assert read_tracker_ids(ids)["mlflow"]["run_id"] == logger.run_id


def test_wandb_resumed_run_dir_continues_the_same_run(make_cfg, tmp_path, monkeypatch):
    import wandb

    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("logger=wandb", "debug=smoke")
    ids_file = tmp_path / "run" / "tracker_ids.json"
    first = build(cfg, "wandb")
    assert first.resumed_id is None
    try:
        first.log_metrics({"loss/policy": 1.0}, step=0)
        run_id = first.experiment.id
    finally:
        first.experiment.finish()
        wandb.teardown()
    assert read_tracker_ids(ids_file)["wandb"] == {"id": run_id, "project": "agentrl"}

    second = build(cfg, "wandb")
    assert second.resumed_id == run_id
    try:
        second.log_metrics({"loss/policy": 0.5}, step=1)
        assert second.experiment.id == run_id
    finally:
        second.experiment.finish()
        wandb.teardown()
    # two offline segments of one run: `wandb sync` appends the second to the first
    runs = sorted(glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*")))
    # offline-run-<time>-<id>, with -1 appended when both started within the same second
    assert [Path(r).name.split("-")[3] for r in runs] == [run_id, run_id]
    for path in runs:
        (run_file,) = glob.glob(f"{path}/run-*.wandb")
        (record,) = [
            r for r in read_wandb_records(Path(run_file)) if r.WhichOneof("record_type") == "run"
        ]
        assert record.run.run_id == run_id

    monkeypatch.setenv("WANDB_PROJECT", "elsewhere")  # another project: a new run
    assert build(make_cfg("logger=wandb", "debug=smoke"), "wandb").resumed_id is None


# ----------------------------------------------------------------------------- evaluate.py log_to
@pytest.fixture
def evaluation(tmp_path):
    """A hand-made evaluation (baseline at RL step 0, a checkpoint at 4) and its written files."""
    from agentrl.evaluation import html
    from agentrl.evaluation.outputs import capability_png, trajectory_records, write_all
    from tests.evaluation.test_report import hand_made

    ev = hand_made()
    png = capability_png(ev.rows)
    page = html.render(ev, png, list(trajectory_records(ev)), "hand-made")
    out = tmp_path / "eval"
    return ev, out, write_all(ev, out, page, png)


def test_evaluation_to_every_tracker(evaluation, tmp_path, monkeypatch):
    import wandb
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agentrl.evaluation.tracking import log_evaluation

    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    ev, out, files = evaluation
    success = [r["success_rate"] for r in ev.rows]  # baseline (step 0), step 4
    try:
        errors = log_evaluation(ev, out, files, ["wandb", "mlflow", "tensorboard"])
    finally:
        wandb.teardown()
    assert errors == {}

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Scalars("eval/toolcalc/success_rate")
    assert [(e.step, e.value) for e in events] == [(0, success[0]), (4, success[1])]
    assert "eval/results/text_summary" in acc.Tags()["tensors"]

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("agentrl").experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "eval/toolcalc/success_rate")
    assert sorted((m.step, m.value) for m in history) == [(0, success[0]), (4, success[1])]
    assert client.get_metric_history(run.info.run_id, "eval/toolcalc/pass_at_1")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert artifacts == {f"eval/{name}" for name in files}
    assert len(list((out / "mlartifacts").glob("*/artifacts/eval/metrics.json"))) == 1

    (run_dir,) = glob.glob(str(out / "wandb" / "offline-run-*"))
    (table_file,) = glob.glob(f"{run_dir}/files/media/table/eval/results_*.table.json")
    table = json.loads(Path(table_file).read_text())
    assert table["columns"][:4] == ["label", "kind", "names", "rl_step"]
    assert [row[0] for row in table["data"]] == [r["label"] for r in ev.rows]
    (run_file,) = glob.glob(f"{run_dir}/run-*.wandb")
    history = wandb_history(read_wandb_records(Path(run_file)))
    curve = [
        (h["rl_step"], h["eval/toolcalc/success_rate"])
        for h in history
        if "eval/toolcalc/success_rate" in h
    ]
    assert curve == [(0, pytest.approx(success[0])), (4, pytest.approx(success[1]))]


def test_evaluation_tracker_failure_is_a_warning(evaluation, monkeypatch):
    from agentrl.evaluation import tracking

    def broken(*args):
        raise ConnectionError("no server")

    monkeypatch.setitem(tracking.LOGGERS, "mlflow", broken)
    ev, out, files = evaluation
    assert tracking.log_evaluation(ev, out, files, ["mlflow"]) == {
        "mlflow": "ConnectionError: no server"
    }


def test_evaluation_log_to_rejects_unknown_trackers():
    from agentrl.evaluation.sources import EvalError
    from agentrl.evaluation.tracking import check_log_to

    assert check_log_to(None) == []
    with pytest.raises(EvalError, match="comet"):
        check_log_to(["wandb", "comet"])


def test_evaluate_config_has_log_to_and_checks_it():
    from agentrl.evaluation.cli import check_settings
    from agentrl.evaluation.sources import EvalError
    from tests.evaluation.conftest import compose_eval

    assert list(compose_eval([]).log_to) == []
    check_settings(compose_eval(["log_to=[wandb,mlflow,tensorboard]"]))
    with pytest.raises(EvalError, match="unknown tracker"):
        check_settings(compose_eval(["log_to=[comet]"]))
