"""Loggers. ``ResumableCSVLogger`` is Lightning's CSVLogger that keeps the run's metrics.csv.

Lightning's CSV writer deletes an existing metrics.csv when it starts; a resumed run (requeue,
crash, ``ckpt_path``) must instead continue the file. ``truncate_metrics`` drops the rows a crashed
run wrote after its last checkpoint, so the resumed run's rows replace them exactly.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

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
