"""bench/bench_rl_step.py runs its arms as launches of the same recipe and reads their steps back:
one row per arm, each arm's own settings applied (the prefix cache off in one of them), an arm
that fails reported as failed while the others run."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_rl_step_runs_each_arm_and_reports_its_steps(tmp_path):
    out_json = tmp_path / "steps.json"
    cmd = [sys.executable, "bench/bench_rl_step.py", "--steps", "2", "--cache", str(tmp_path)]
    cmd += ["--arms", "hf,hf_no_prefix_cache", "--out", str(out_json)]
    # an arm of one's own runs after those of --arms; one whose launch fails is reported, and the
    # others still run
    cmd += ["--arm", "broken=rollout=hf,env.max_turns=0"]
    cmd += ["--extra", "warmstart.steps=4", "data.tasks_per_step=2"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| hf")]
    assert [r.split("|")[1].strip() for r in rows] == ["hf", "hf_no_prefix_cache"]
    broken = [line for line in out.stdout.splitlines() if line.startswith("| broken")]
    assert len(broken) == 1 and "failed: exit 2" in broken[0] and "max_turns" in broken[0]
    doc = json.loads(out_json.read_text())
    assert "max_turns" in doc["results"].pop("broken")["failed"]
    assert doc["arms"]["hf_no_prefix_cache"][-1] == "rollout.engine.reuse_prefixes=false"
    for name, r in doc["results"].items():
        assert r["steps"] == 2 and len(r["step_s_all"]) == 2, name
        assert r["step_s"] > 0 and r["rollout_s"] > 0 and r["rollout_tokens_per_s"] > 0, name
    # the arm's override reached its run: without the cache nothing is reused (nor logged)
    assert doc["results"]["hf"]["prefix_reused_frac"] > 0.3
    assert doc["results"]["hf_no_prefix_cache"]["prefix_reused_frac"] is None


def test_an_unknown_arm_is_refused_with_the_known_ones():
    cmd = [sys.executable, "bench/bench_rl_step.py", "--arms", "hf,nope"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "unknown arm(s) ['nope']" in out.stderr and "vllm_bf16" in out.stderr
