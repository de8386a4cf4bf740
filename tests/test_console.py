"""What a run prints (agentrl/console.py, the model summary, the run summary): each log line once,
no warning a user cannot act on, the summary last. The slow test reads a real smoke run's output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from agentrl import console
from agentrl.module import eval_mode
from tests.conftest import ROOT

# a log line of the job's format: [time][logger][LEVEL] - message
JOB_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[(?P<name>[^\]]+)\]\[(?P<level>[A-Z]+)\] - (?P<msg>.*)$"
)
# Lightning's own console handler's format: LEVEL: message
BARE_LINE = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL): (?P<msg>.*)$")
# warnings.formatwarning (Python's "file.py:12: Category: message", Lightning's "file.py:12: msg")
WARNING_LINE = re.compile(r"^\S+\.py:\d+: (?P<msg>.*)$")

# Warnings a smoke run may print, each with the reason a user cannot act on it. Empty: every
# warning a run printed was fixed where it came from or filtered in agentrl/console.py.
ALLOWED_WARNINGS: list[re.Pattern] = []


def log_messages(output: str) -> list[str]:
    """The message of every log line, in either format."""
    found = (JOB_LINE.match(line) or BARE_LINE.match(line) for line in output.splitlines())
    return [m["msg"] for m in found if m]


def duplicated(output: str) -> list[str]:
    """Messages logged more than once."""
    messages = log_messages(output)
    return sorted({m for m in messages if messages.count(m) > 1})


def warnings_in(output: str) -> list[str]:
    """Printed warnings and log lines at WARNING or above that no ALLOWED_WARNINGS entry explains."""
    out = []
    for line in output.splitlines():
        m = JOB_LINE.match(line) or BARE_LINE.match(line)
        if m:
            warned = m["level"] in ("WARNING", "ERROR", "CRITICAL")
        else:
            warned = bool(WARNING_LINE.match(line) or re.search(r"\w+Warning\b", line))
        if warned and not any(p.search(line) for p in ALLOWED_WARNINGS):
            out.append(line)
    return out


# the start of a smoke run before issue 19's console fixes (two handlers, tips, warnings)
BEFORE = """\
INFO: Seed set to 0
[2026-12-06 17:17:02,957][lightning.fabric.utilities.seed][INFO] - Seed set to 0
INFO: 💡 Tip: For seamless cloud logging, try installing [litlogger]
[2026-12-06 17:17:03,293][lightning.pytorch.utilities.rank_zero][INFO] - 💡 Tip: For seamless cloud logging, try installing [litlogger]
[2026-12-06 17:17:03,646][agentrl.warmstart][INFO] - warm start: 8 demonstrations (62% correct), 2 steps
/venv/lightning/pytorch/utilities/_pytree.py:21: `isinstance(treespec, LeafSpec)` is deprecated
/venv/lightning/pytorch/loops/fit_loop.py:538: Found 59 module(s) in eval mode at the start of training.
/venv/x.py:3: UserWarning: something
  warnings.warn("something")
[2026-12-06 17:17:03,646][agentrl.warmstart][WARNING] - warm start: 6 of 16 demonstrated actions are longer
"""  # noqa: E501


def test_the_checks_catch_what_a_run_printed_before():
    assert duplicated(BEFORE) == [
        "Seed set to 0",
        "💡 Tip: For seamless cloud logging, try installing [litlogger]",
    ]
    found = warnings_in(BEFORE)
    assert len(found) == 4, found
    for part in ("LeafSpec", "eval mode", "UserWarning: something", "[WARNING] - warm start"):
        assert any(part in w for w in found), part


def test_lightning_logs_once_through_the_job_handlers():
    import lightning  # noqa: F401  (attaches its handler to the "lightning" logger)

    root, loggers = logging.getLogger(), [logging.getLogger(n) for n in console.LIGHTNING_LOGGERS]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    records: list[logging.LogRecord] = []
    job_handler = logging.Handler()
    job_handler.emit = records.append
    root.addHandler(job_handler)
    try:
        assert logging.getLogger("lightning").handlers  # Lightning's own, before
        console.route_lightning_logging()
        assert all(not lg.handlers and lg.propagate for lg in loggers)
        logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("once")
        assert [r.getMessage() for r in records] == ["once"]
    finally:
        root.removeHandler(job_handler)
        for lg, (handlers, propagate) in zip(loggers, saved):
            lg.handlers[:] = handlers
            lg.propagate = propagate


def test_lightning_tips_are_dropped_and_nothing_else():
    keep = console.DropLightningTips().filter
    tip = logging.LogRecord("x", logging.INFO, "", 0, "💡 Tip: try installing litlogger", (), None)
    other = logging.LogRecord("x", logging.INFO, "", 0, "GPU available: %s", (False,), None)
    assert not keep(tip) and keep(other)


def assert_filtered_and_only_it(raise_it, marker: str, why_absent: str) -> None:
    """``raise_it()`` warns ``marker`` (else the test is skipped: ``why_absent``); with the
    console's filters on, only a warning of the run's own remains."""

    def caught(filtered: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if filtered:
                console.filter_unactionable_warnings()
            raise_it()
            warnings.warn("a warning of the run's own", UserWarning, stacklevel=1)
        return [str(w.message) for w in seen]

    if not any(marker in m for m in caught(filtered=False)):
        pytest.skip(why_absent)
    assert caught(filtered=True) == ["a warning of the run's own"]


def test_the_pytree_deprecation_inside_lightning_is_filtered_and_only_it():
    from lightning.pytorch.utilities._pytree import _tree_flatten

    assert_filtered_and_only_it(
        lambda: _tree_flatten([1, 2]),  # builds torch's deprecated LeafSpec inside Lightning
        "LeafSpec",
        "this torch/Lightning pair does not raise the LeafSpec deprecation",
    )


def test_peft_reading_the_deprecated_checkpointing_alias_is_filtered():
    from agentrl.models.factory import apply_adapter, tiny_random_model
    from tests.models.test_models import _adapter_cfg

    assert_filtered_and_only_it(
        lambda: apply_adapter(tiny_random_model("llama")[0], _adapter_cfg("lora")),
        "is_gradient_checkpointing",
        "this PEFT/transformers pair does not read the deprecated alias",
    )


def test_the_mixed_precision_size_note_of_the_model_summary_is_filtered():
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_summary import ModelSummary

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 4)

    def summarize() -> None:
        module = Module()
        module.trainer = pl.Trainer(
            precision="bf16-mixed", accelerator="cpu", logger=False, enable_progress_bar=False
        )
        # float32 weights under autocast: 4 bytes each
        assert ModelSummary(module).model_size == pytest.approx(20 * 4 / 1e6)

    assert_filtered_and_only_it(
        summarize, "model summary", "this Lightning sizes bf16-mixed models without a warning"
    )


@pytest.mark.parametrize("in_allocation", [False, True])
def test_the_srun_hint_is_dropped_outside_a_slurm_allocation_only(
    tmp_path, monkeypatch, in_allocation
):
    """CI (and any machine with SLURM installed) has `srun` on PATH: Lightning then warns on every
    run not started by srun. That hint is for a process inside an allocation that forgot srun."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    if in_allocation:
        monkeypatch.setenv("SLURM_JOB_ID", "7")
    else:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        console.filter_unactionable_warnings()
        SLURMEnvironment.detect()
    hints = [w for w in seen if "`srun` command is available" in str(w.message)]
    assert len(hints) == (1 if in_allocation else 0), [str(w.message) for w in seen]


def test_eval_mode_restores_the_previous_mode():
    layer = torch.nn.Dropout(0.5)
    with eval_mode(layer):
        assert not layer.training
    assert layer.training
    layer.eval()
    with eval_mode(layer):
        pass
    assert not layer.training


def test_the_model_summary_has_no_flops_or_mode_column(caplog):
    import lightning as L
    from lightning.pytorch.utilities.model_summary import summarize

    from agentrl.callbacks import ModelSummary

    class Two(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.policy = torch.nn.Linear(4, 4)
            self.reference = torch.nn.Linear(4, 4).requires_grad_(False)

    s = summarize(Two(), max_depth=1)
    with caplog.at_level(logging.INFO, logger="agentrl.callbacks"):
        ModelSummary.summarize(
            s._get_summary_data(),
            s.total_parameters,
            s.trainable_parameters,
            s.model_size,
            s.total_training_modes,
            total_flops=0,
        )
    assert caplog.records[-1].getMessage().splitlines() == [
        "model:",
        "  | Name      | Type   | Params",
        "0 | policy    | Linear | 20",
        "1 | reference | Linear | 20",
        "20 trainable and 20 frozen parameters (0.000 MB)",
    ]


def launch(run_dir: Path, cache: Path, *overrides: str) -> str:
    """``python launch.py`` as a user runs it; its stdout and stderr together."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTRL_CACHE": str(cache)}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "launch.py", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # a hang guard only: a smoke run takes ~40 s alone, 20+ min on a starved shared CPU
        timeout=1800,
    )
    assert proc.returncode == 0, f"{shlex.join(cmd)} failed:\n{proc.stdout[-5000:]}"
    return proc.stdout


@pytest.mark.slow
def test_a_smoke_run_prints_each_line_once_no_warning_and_ends_on_its_summary(tmp_path):
    """A fresh cache, so the warm start's trainer runs too; the README's SmolLM2 env settings,
    which the test-split command (the run dir alone) then evaluates on."""
    run = tmp_path / "run"
    settings = ["env.max_ops=3", "env.left_to_right=false"]
    out = launch(run, tmp_path / "cache", "debug=smoke", *settings)
    assert duplicated(out) == [], out
    assert warnings_in(out) == [], out
    for symptom in ("Tip:", "Epoch 0/-", "FLOPs", "Writing model shards"):
        assert symptom not in out, out
    summary = out[out.rindex("run finished in ") :].splitlines()
    # the summary is the last thing printed
    assert summary[-1].startswith("  next, the test split: python evaluate.py"), out
    text = "\n".join(summary)
    for item in ("held-out success: ", "checkpoints: ", "exported policy", "learning curve: "):
        assert item in text, text
    words = shlex.split(summary[-1].split(": ", 1)[1])
    assert words[2:] == [f"run_dir={run}"]
    # evaluate.py takes the command as printed and evaluates the run's own env
    proc = subprocess.run(
        [sys.executable, *words[1:], "num_tasks=2", "baseline=false", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "AGENTRL_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    suites = json.loads((run / "eval" / "metrics.json").read_text())["config"]["suites"]
    assert (suites["toolcalc"]["max_ops"], suites["toolcalc"]["left_to_right"]) == (3, False)
