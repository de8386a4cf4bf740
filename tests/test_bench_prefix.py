"""bench/bench_prefix.py runs, and on the tiny model in float32 the prefix cache samples exactly the
episodes a full prefill does (its table's token-identical count)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_prefix_runs_and_the_two_settings_agree_in_float32(tmp_path):
    cmd = [sys.executable, "bench/bench_prefix.py", "--model", "tiny", "--env", "toolcalc"]
    cmd += ["--episodes", "6", "--repeats", "1", "--adapter", "none", "--precision", "32"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "token-identical episodes: 6/6" in out.stdout
    rows = [
        line
        for line in out.stdout.splitlines()
        if line.startswith("| true") or line.startswith("| false")
    ]
    assert len(rows) == 2
    reused = {r.split("|")[1].strip(): r.split("|")[6].strip() for r in rows}
    assert reused["false"] == "0%" and int(reused["true"].rstrip("%")) > 30
