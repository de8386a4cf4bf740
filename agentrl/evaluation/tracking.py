"""``log_to=[wandb,mlflow,tensorboard]``: an evaluation's results, also in tracking tools.

Each tool gets a run of its own (W&B job type ``evaluate``, MLflow run name ``evaluate``):

- every numeric metric of every row as a scalar: ``eval/<suite>/<metric>`` at step = RL step when
  the suite's policies have distinct RL steps (the capability curve), else
  ``eval/<suite>/<label>/<metric>`` at step 0;
- W&B: the rows as a ``wandb.Table`` (``eval/results``) and comparison.txt in the run summary;
- MLflow: every output file as an artifact (folder ``eval``);
- TensorBoard: metrics.csv and comparison.txt as text.

Settings come from the environment, as in training: ``WANDB_MODE`` (default offline, the run in
``<output_dir>/wandb``), ``WANDB_PROJECT``, ``WANDB_ENTITY``; ``MLFLOW_TRACKING_URI`` (default
``sqlite:///<output_dir>/mlflow.db``, artifacts in ``<output_dir>/mlartifacts``),
``MLFLOW_EXPERIMENT_NAME``; TensorBoard writes
``<output_dir>/tensorboard``. The files are written first; a tracker that fails is a warning.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

from agentrl.evaluation.outputs import Evaluation, columns, comparison_text, csv_text
from agentrl.evaluation.sources import EvalError

log = logging.getLogger("agentrl.evaluation")

TRACKERS = ("wandb", "mlflow", "tensorboard")


def check_log_to(log_to) -> list[str]:
    names = [str(n) for n in (log_to or [])]
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise EvalError(f"log_to: unknown tracker(s) {bad}; choose from {list(TRACKERS)}")
    return names


def scalars(ev: Evaluation) -> list[tuple[int, dict[str, float]]]:
    """(step, {key: value}) for every row, keyed as the module docstring says."""
    out = []
    for suite in dict.fromkeys(r["suite"] for r in ev.rows):
        rows = [r for r in ev.rows if r["suite"] == suite]
        steps = [r["rl_step"] for r in rows]
        by_step = None not in steps and len(set(steps)) == len(steps)
        for r in rows:
            prefix = f"eval/{suite}" if by_step else f"eval/{suite}/{r['label']}"
            values = {
                f"{prefix}/{k}": float(v)
                for k, v in r.items()
                if isinstance(v, int | float)
                and not isinstance(v, bool)
                and k != "rl_step"
                and math.isfinite(v)
            }
            out.append((int(r["rl_step"]) if by_step else 0, values))
    return sorted(out, key=lambda sv: sv[0])


def _wandb(ev: Evaluation, out: Path, files: dict[str, Path]) -> None:
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "agentrl"),
        entity=os.environ.get("WANDB_ENTITY") or None,
        mode=os.environ.get("WANDB_MODE", "offline"),
        dir=str(out),
        job_type="evaluate",
        config=ev.config,
    )
    try:
        run.define_metric("rl_step")
        run.define_metric("eval/*", step_metric="rl_step")
        for step, values in scalars(ev):
            run.log({"rl_step": step, **values})
        cols = columns(ev.rows)
        data = [[_cell(r.get(c)) for c in cols] for r in ev.rows]
        run.log({"eval/results": wandb.Table(columns=cols, data=data)})
        run.summary["eval/comparison"] = comparison_text(ev)
    finally:
        run.finish()


def _cell(v):
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return str(v)


def mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits, ``_-. /`` only: pass@1 -> pass_at_1, others -> _."""
    return re.sub(r"[^\w\-./ ]", "_", key.replace("@", "_at_"))


def _mlflow(ev: Evaluation, out: Path, files: dict[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "agentrl")
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None  # MLflow's default is ./mlruns: keep a SQLite store's files beside it
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
        exp_id = client.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    run_id = client.create_run(exp_id, tags={"mlflow.runName": "evaluate"}).info.run_id
    status = "FAILED"
    try:
        for step, values in scalars(ev):
            for key, value in values.items():
                client.log_metric(run_id, mlflow_key(key), value, step=step)
        for path in files.values():
            client.log_artifact(run_id, str(path), "eval")
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)


def _tensorboard(ev: Evaluation, out: Path, files: dict[str, Path]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(out / "tensorboard"))
    try:
        for step, values in scalars(ev):
            for key, value in values.items():
                writer.add_scalar(key, value, step)
        writer.add_text("eval/results", "    " + csv_text(ev.rows).replace("\n", "\n    "))
        writer.add_text("eval/comparison", "    " + comparison_text(ev).replace("\n", "\n    "))
    finally:
        writer.close()


LOGGERS = {"wandb": _wandb, "mlflow": _mlflow, "tensorboard": _tensorboard}


def log_evaluation(ev: Evaluation, out: Path, files: dict[str, Path], log_to) -> dict[str, str]:
    """Send the evaluation to each tracker of ``log_to``. Returns {tracker: error} of failures."""
    errors = {}
    for name in check_log_to(log_to):
        try:
            LOGGERS[name](ev, Path(out), files)
            log.info("logged the evaluation to %s", name)
        except Exception as exc:  # the files are written: a tracker never fails the evaluation
            errors[name] = f"{type(exc).__name__}: {exc}"
            log.warning("could not log the evaluation to %s (%s)", name, errors[name])
    return errors
