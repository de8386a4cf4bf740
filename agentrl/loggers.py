"""Loggers. ``ResumableCSVLogger`` is Lightning's CSVLogger that keeps the run's metrics.csv.

Lightning's CSV writer deletes an existing metrics.csv when it starts; a resumed run (requeue,
crash, ``ckpt_path``) must instead continue the file. ``truncate_metrics`` drops the rows a crashed
run wrote after its last checkpoint, so the resumed run's rows replace them exactly.

``ResumableWandbLogger`` and ``ResumableMLFlowLogger`` save their run id in
``<run dir>/tracker_ids.json``; a later run of the same run directory continues that tracker run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class ResumableCSVLogger(CSVLogger):
    @property
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def truncate_metrics(run_dir: str | Path, rl_step: int, key: str = "train/rl_step") -> int:
    """Drop rows of ``run_dir/metrics.csv`` logged after ``rl_step``. Returns rows dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = list(reader)
    keep = [r for r in rows if not r.get(key) or float(r[key]) <= rl_step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)
    return len(rows) - len(keep)


# ----------------------------------------------------------------------------- tracker resume
TRACKER_IDS_FILE = "tracker_ids.json"


def read_tracker_ids(path: str | Path | None) -> dict:
    """The ids saved by earlier runs of this run directory ({} when none or unreadable)."""
    if not path or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        log.warning("ignoring unreadable tracker id file %s", path)
        return {}
    return data if isinstance(data, dict) else {}


def save_tracker_id(path: str | Path | None, tracker: str, record: dict) -> None:
    """Merge ``{tracker: record}`` into the id file (written atomically)."""
    if not path:
        return
    path = Path(path)
    data = read_tracker_ids(path)
    if data.get(tracker) == record:
        return
    data[tracker] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class ResumableWandbLogger(WandbLogger):
    """WandbLogger that continues the run of an earlier run of the same run directory.

    ids_file: where the W&B run id is saved once the run starts (``<run dir>/tracker_ids.json``).
    When it holds an id for the same project and ``id`` is not given, that run is resumed
    (``resume="allow"``); a different project starts a new run.
    """

    def __init__(self, *args, ids_file: str | None = None, id: str | None = None, **kwargs):
        self.ids_file = ids_file
        self._id_saved = False
        saved = read_tracker_ids(ids_file).get("wandb") or {}
        project = kwargs.get("project") or os.environ.get("WANDB_PROJECT", "lightning_logs")
        if id is None and saved.get("id") and saved.get("project") == project:
            id = saved["id"]
            log.info("resuming W&B run %s (from %s)", id, ids_file)
        self.resumed_id = id if saved.get("id") == id and id is not None else None
        kwargs.setdefault("resume", "allow")
        super().__init__(*args, id=id, **kwargs)

    @property
    def experiment(self):
        run = super().experiment
        ok = rank_zero_only.rank == 0 and isinstance(getattr(run, "id", None), str)
        if self.ids_file and not self._id_saved and ok:
            save_tracker_id(self.ids_file, "wandb", {"id": run.id, "project": self._project})
            self._id_saved = True
        return run


class ResumableMLFlowLogger(MLFlowLogger):
    """MLFlowLogger that continues the run of an earlier run of the same run directory.

    ids_file: where the MLflow run id is saved once the run is created. When it holds a run id
    of the same tracking URI, ``run_id`` is not given and that run still exists, it is reused.
    With a SQLite store and no ``artifact_location``, a new experiment's artifacts go to
    ``mlartifacts/`` beside the database (not ./mlruns of the working directory).
    """

    def __init__(self, *args, ids_file: str | None = None, run_id: str | None = None, **kwargs):
        self.ids_file = ids_file
        self._id_saved = False
        saved = read_tracker_ids(ids_file).get("mlflow") or {}
        uri = kwargs.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if run_id is None and saved.get("run_id") and saved.get("tracking_uri") == uri:
            if _mlflow_run_exists(uri, saved["run_id"]):
                run_id = saved["run_id"]
                log.info("resuming MLflow run %s (from %s)", run_id, ids_file)
            else:
                log.warning("MLflow run %s of %s is gone: starting a new run", saved, ids_file)
        self.resumed_id = run_id if saved.get("run_id") == run_id and run_id else None
        if kwargs.get("artifact_location") is None and str(uri or "").startswith("sqlite:///"):
            # MLflow's default artifact root is ./mlruns of the working directory: keep a local
            # store's artifacts beside its database (for an experiment created by this run)
            db = Path(str(uri)[len("sqlite:///") :])
            kwargs["artifact_location"] = (db.parent / "mlartifacts").resolve().as_uri()
        super().__init__(*args, run_id=run_id, **kwargs)

    @property
    def experiment(self):
        client = super().experiment
        if self.ids_file and not self._id_saved and self._run_id and rank_zero_only.rank == 0:
            record = {"run_id": self._run_id, "tracking_uri": self._tracking_uri}
            save_tracker_id(self.ids_file, "mlflow", record)
            self._id_saved = True
        return client


def _mlflow_run_exists(uri: str | None, run_id: str) -> bool:
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception:  # MlflowException (no such run), or the store cannot be reached
        return False
    return True
