"""A real (tiny) training run, then evaluate.py's main on its run directory (slow tier)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from agentrl.evaluation import main
from agentrl.evaluation.policies import RunPolicy, load_hf
from agentrl.evaluation.sources import load_run_config
from agentrl.train import run
from tests.conftest import SHORT_WARMSTART_LR

# a checkpoint at every validation, named by RL step: what evaluate.py needs along a run
EVERY_VALIDATION = {
    "_target_": "agentrl.evaluation.checkpoints.RLStepCheckpoint",
    "dirpath": "${paths.output_dir}/checkpoints",
    "every_n_steps": 1,
}
RUN = [
    # one thread: on a busy 2-core machine more threads slow the loop down many-fold
    "num_threads=1",
    "debug=smoke",
    "adapter=lora",
    "data.steps=2",
    "trainer.val_check_interval=1",
    "data.tasks_per_step=2",
    "algorithm.group_size=2",
    "warmstart.steps=20",
    SHORT_WARMSTART_LR,
    "warmstart.num_demos=32",
    "warmstart.batch_size=8",
]


@pytest.mark.slow
def test_evaluate_a_real_run(make_cfg, eval_cfg, tmp_path):
    cfg = make_cfg(*RUN)
    with open_dict(cfg):
        cfg.callbacks.every_validation = EVERY_VALIDATION
    run(cfg)
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what Hydra writes for launch.py
    stems = sorted(p.stem for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert {"step1", "step2", "last"} <= set(stems), stems

    settings = ["num_tasks=8", "bootstrap_samples=500", "report_episodes=4", "num_threads=1"]
    main(eval_cfg(f"run_dir={run_dir}", *settings, short=False))
    out = run_dir / "eval"
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rl_step"]) for r in rows] == [0, 1, 2]
    assert rows[0]["label"] == "baseline"
    # best.ckpt is wherever validation success peaked (step 1 or 2 in this tiny run)
    best_step = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["agentrl"][
        "rl_step"
    ]
    last_names = {"last", "step2"} | ({"best"} if best_step == 2 else set())
    assert set(rows[-1]["names"].split()) == last_names
    assert rows[-1]["label"] == f"step 2 ({', '.join(sorted(last_names - {'step2'}))})"
    assert all(r["episodes"] == "8" for r in rows)
    doc = json.loads((out / "metrics.json").read_text())
    assert any(n.startswith("baseline = the run's warm start (cached at") for n in doc["notes"])
    # the end of RL against its start is its own comparison when the last is not the best
    assert [c["comparison"] for c in doc["comparisons"]] == [
        "first vs last checkpoint",
        "best vs baseline",
    ] + ([] if best_step == 2 else ["last vs baseline"])
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 3 * 8
    page = (out / "report.html").read_text()
    assert page.count('class="episode"') == 3 * 4
    assert (out / "capability.png").stat().st_size > 5_000

    # the checkpoints reproduce the policy training validated: the same val episodes, turn by
    # turn, as the run's samples/val.jsonl at RL steps 1 and 2 (greedy, first val tasks)
    val = main(
        eval_cfg(
            f"run_dir={run_dir}",
            "split=val",
            f"num_tasks={cfg.data.num_val_tasks}",
            f"output_dir={tmp_path / 'val'}",
            "num_threads=1",
            short=False,
        )
    )
    logged = [json.loads(x) for x in (run_dir / "samples" / "val.jsonl").read_text().splitlines()]
    for step in (1, 2):
        want = [[r["task_id"], r["turns"]] for r in logged if r["rl_step"] == step]
        label = next(r["label"] for r in val.rows if r["rl_step"] == step)
        got = [(t.task.id, t.to_record()["turns"]) for t in val.trajectories[(label, "toolcalc")]]
        assert json.loads(json.dumps(got)) == want, step
    with open(run_dir / "metrics.csv") as f:
        step0 = next(
            float(r["val/success_rate"]) for r in csv.DictReader(f) if r["val/success_rate"]
        )
    assert val.rows[0]["label"] == "baseline"
    assert val.rows[0]["success_rate"] == pytest.approx(step0)

    # the exported policy (LoRA merged) is the last checkpoint's: same logits (up to the float
    # rounding of the merge, which can flip a greedy near-tie, so episodes are not compared)
    export = main(
        eval_cfg(f"model_dir={run_dir / 'export'}", *settings, f"output_dir={tmp_path / 'hf'}")
    )
    assert [r["label"] for r in export.rows] == ["baseline", "export"]
    assert export.rows[-1]["rl_step"] == 2
    policy = RunPolicy(load_run_config(run_dir), torch.device("cpu"), baseline=False)
    policy.load(str(run_dir / "checkpoints" / "last.ckpt"))
    merged, tokenizer = load_hf(str(run_dir / "export"), torch.device("cpu"))
    ids = torch.tensor([tokenizer("Compute (12+7)*3-5")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, policy.model(ids).logits, atol=1e-4, rtol=0)
