"""A stop inside the warm start, agreed between the ranks of one run through two files.

The warm start runs before the RL trainer sets up its process group, so no collective exists
yet. Under ``trainer=ddp`` with Lightning's own launcher rank 0 computes it alone (the other
ranks are started after it, and reuse it); ranks started together by ``srun``, ``torchrun`` or
by hand each run it: one computes under the cache entry's file lock, the others wait for that
lock. Those ranks agree through the run directory, which they share:

- ``.warmstart.request``: a rank waiting for the lock that gets SIGTERM/SIGINT writes its
  signal here; the computing rank reads it after each optimizer step and stops there, as for a
  signal of its own;
- ``.warmstart.stopped``: the computing rank, at a stop, writes where it stopped and what it
  saved before it releases the lock; a waiting rank of the run that then gets the lock stops
  with the same line instead of training on alone (and waiting for a rank that has gone).

A file written before this process started (see ``STARTED``) is a previous attempt's and is
ignored: the ranks of one attempt start together, and a stop comes after the computing rank
loaded its model and demonstrations. Another run sharing the cache (a sweep's job) has its own
run directory: its stop does not stop this run, and this run continues its saved progress.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

# when this process started (the module is imported as a run starts)
STARTED = time.time()


class StopFiles:
    """The two files of ``run_dir`` for the warm start whose cache key is ``key``."""

    def __init__(self, run_dir: str | Path, key: str):
        self.request_path = Path(run_dir) / ".warmstart.request"
        self.stopped_path = Path(run_dir) / ".warmstart.stopped"
        self.key = key

    def _write(self, path: Path, fields: dict) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": self.key, "time": time.time(), **fields}))
            os.replace(tmp, path)
        except OSError as exc:  # the stop goes on; the other ranks may not hear of it
            log.warning("warm start: cannot write %s (%s)", path, exc)

    def _read(self, path: Path) -> dict | None:
        """The file's fields if it is of this attempt and this warm start, else None."""
        try:
            fields = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if fields.get("key") != self.key or fields.get("time", 0) < STARTED:
            return None
        return fields

    def request(self, signum: int) -> None:
        """A waiting rank got ``signum``: ask the computing rank to stop."""
        self._write(self.request_path, {"signal": signal.Signals(signum).name})

    def requested(self) -> int | None:
        """The signal a waiting rank of this run asked to stop for (None: no request)."""
        fields = self._read(self.request_path)
        return signal.Signals[fields["signal"]] if fields else None

    def stopped(self, signum: int, step: int, saved: tuple[str, str] | None) -> None:
        """The computing rank stopped at ``step`` having saved ``saved`` (description, path)."""
        fields = {"signal": signal.Signals(signum).name, "step": step, "saved": saved}
        self._write(self.stopped_path, fields)

    def stop_record(self) -> dict | None:
        """Where the computing rank of this run stopped (None: it did not)."""
        return self._read(self.stopped_path)

    def clear(self) -> None:
        """The warm start is done: both files are moot."""
        for path in (self.request_path, self.stopped_path):
            path.unlink(missing_ok=True)
