"""report.html and the other files from a hand-made Evaluation; the page in real headless Chromium.

Chromium is Debian's ``chromium`` package (CI installs it: ``apt-get install -y chromium``);
without ``chromium`` on PATH the browser tests skip and say so (fail under AGENTRL_REQUIRE_ALL=1,
as in CI).
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from pathlib import Path

import pytest

from agentrl.evaluation import html
from agentrl.evaluation.outputs import (
    Evaluation,
    capability_png,
    compare,
    trajectory_records,
    write_all,
)
from agentrl.evaluation.stats import episode_summary
from agentrl.types import Task, Trajectory, Turn
from tests.conftest import require_chromium

HOSTILE = "<script>document.title='owned'</script> & \"quotes\""


def episode(task: Task, success: bool) -> Trajectory:
    calc = {"tool": "calc", "invalid": False, "result": 19, "error": None}
    answer = {"tool": "answer", "invalid": False, "answer": 19 if success else 7, "error": None}
    return Trajectory(
        task=task,
        token_ids=[1, 2, 3, 4],
        loss_mask=[0, 0, 1, 1],
        logprobs=[0.0] * 4,
        prompt_len=2,
        turns=[
            Turn("<calc>12+7</calc>", "<result>19</result>", 0.0, (2, 3), calc),
            Turn(f"<answer>{19 if success else 7}</answer>", "", float(success), (3, 4), answer),
        ],
        reward=float(success),
        success=success,
    )


def hand_made() -> Evaluation:
    tasks = [Task("t/0", "Compute 12+7"), Task("t/1", HOSTILE, answer=3)]
    runs = {"baseline": (0, [False, False]), "step 4 (best, last)": (4, [True, False])}
    ev = Evaluation(config={"split": "test"}, candidates=[], notes=["a note"])
    for label, (step, wins) in runs.items():
        trajs = [episode(t, w) for t, w in zip(tasks, wins)]
        kind = "baseline" if step == 0 else "checkpoint"
        names = "" if step == 0 else "best last"
        row = {"label": label, "kind": kind, "names": names, "rl_step": step}
        row |= {"suite": "toolcalc", "split": "test", "path": ""}
        ev.rows.append(row | episode_summary(trajs, [1], samples=200))
        ev.trajectories[(label, "toolcalc")] = trajs
    compare(ev, samples=200, seed=0, confidence=0.95)
    return ev


@pytest.fixture
def report(tmp_path) -> Path:
    ev = hand_made()
    png = capability_png(ev.rows)
    page = html.render(ev, png, list(trajectory_records(ev)), "hand-made")
    write_all(ev, tmp_path / "out", page, png)
    return tmp_path / "out"


def test_files_of_a_hand_made_evaluation(report):
    rows = list(csv.DictReader(io.StringIO((report / "metrics.csv").read_text())))
    assert [(r["label"], r["rl_step"], r["success_rate"]) for r in rows] == [
        ("baseline", "0", "0.0"),
        ("step 4 (best, last)", "4", "0.5"),
    ]
    assert list(rows[0])[:7] == ["label", "kind", "names", "rl_step", "suite", "split", "path"]
    text = (report / "comparison.txt").read_text()
    assert "best vs baseline: " in text and "(best = the run's best.ckpt" in text
    lines = (report / "trajectories.jsonl").read_text().splitlines()
    assert [json.loads(x)["success"] for x in lines] == [False, False, True, False]


def test_page_is_self_contained_and_escaped(report):
    page = (report / "report.html").read_text()
    assert re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched
    assert HOSTILE not in page
    assert "&lt;script&gt;document.title=&#x27;owned&#x27;&lt;/script&gt;" in page
    assert page.count('class="episode"') == 4


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    executable = require_chromium()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]
    return subprocess.run(
        [executable, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )


def test_report_renders_in_chromium_and_filters(report, tmp_path):
    url = (report / "report.html").as_uri()
    dom = chromium("--dump-dom", url, tmp=tmp_path).stdout
    assert '<table id="metrics">' in dom
    assert dom.count("<tr>") == 3  # header + two policies
    assert dom.count('class="episode"') == 4
    assert 'data-ready="true"' in dom  # the script ran to the end
    assert '<span id="shown-count">4 of 4 episodes shown</span>' in dom
    assert "<title>agentrl evaluation</title>" in dom  # the hostile prompt did not run
    # the filter, set from the URL fragment: only the one success is shown
    dom = chromium("--dump-dom", url + "#outcome=success", tmp=tmp_path).stdout
    assert '<span id="shown-count">1 of 4 episodes shown</span>' in dom
    assert dom.count('class="episode" data-outcome="failure"') == 3
    assert len(re.findall(r'<details class="episode" data-outcome="failure"[^>]*hidden', dom)) == 3
    dom = chromium("--dump-dom", url + "#outcome=failure&policy=baseline", tmp=tmp_path).stdout
    assert '<span id="shown-count">2 of 4 episodes shown</span>' in dom


def test_report_screenshot(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    chromium(
        f"--screenshot={shot}",
        "--window-size=1200,900",
        (report / "report.html").as_uri(),
        tmp=tmp_path,
    )
    assert shot.stat().st_size > 20_000
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 900)
    low, high = image.getextrema()
    assert high - low > 100  # text and table lines on a white page, not a blank frame
