"""The learned reward, measured: the reward model's held-out accuracy, and whether a policy
trained on the learned reward (never on the verifier) improves the env's true success.

    python bench/bench_learned_reward.py --env toolcalc --out /tmp/bench_rm [--rl-steps 20]
    python bench/bench_learned_reward.py --env webnav --out /tmp/bench_rm_webnav --rl-steps 0

Runs, through the real command line:
  1. python launch.py mode=reward_model env=<env> <rm overrides>  -> reward_model/info.json
  2. python launch.py env=<env> reward=learned reward.checkpoint=<1> data.steps=<rl-steps> ...
     -> val/success_rate (the verifier's outcome on held-out tasks) before and after RL, and the
     reward-hacking monitor (reward/rm_*) over training.
Prints a Markdown summary; paste it into docs/rewards.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(args: list[str], log: Path) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "launch.py"), *args]
    with log.open("w") as f:
        subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="toolcalc")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rl-steps", type=int, default=20)
    p.add_argument("--val-tasks", type=int, default=100)
    p.add_argument("--rm", nargs="*", default=[], help="extra overrides of the reward model")
    a = p.parse_args()
    quiet = ["callbacks.rich_progress=null", "trainer.enable_progress_bar=false"]
    rm_dir = a.out / "rm"
    secs = launch(
        ["mode=reward_model", f"env={a.env}", f"hydra.run.dir={rm_dir}", *quiet, *a.rm],
        a.out / "rm.log",
    )
    info = json.loads((rm_dir / "reward_model" / "info.json").read_text())
    print(
        f"| reward model ({a.env}) | held-out pairwise accuracy {info['val_accuracy']:.3f} "
        f"on {info['val_pairs']} pairs | correlation with success {info['val_success_corr']:.3f}"
        f" | {info['train_pairs']} train pairs, {info['steps']} steps, {secs:.0f} s |"
    )
    if a.rl_steps <= 0:
        return
    rl_dir = a.out / "rl"
    secs = launch(
        [
            f"env={a.env}",
            "reward=learned",
            f"reward.checkpoint={rm_dir / 'reward_model'}",
            *a.rm,
            f"data.steps={a.rl_steps}",
            f"data.num_val_tasks={a.val_tasks}",
            f"data.val_batch_size={a.val_tasks}",
            f"trainer.val_check_interval={max(1, a.rl_steps // 2)}",
            f"hydra.run.dir={rl_dir}",
            "callbacks.step_checkpoints=null",
            *quiet,
        ],
        a.out / "rl.log",
    )
    metrics = rows(rl_dir / "metrics.csv")
    val = [
        (r.get("train/rl_step"), r["val/success_rate"])
        for r in metrics
        if r.get("val/success_rate")
    ]
    print(
        f"| policy on the learned reward | held-out true success by RL step: {val} | {secs:.0f} s |"
    )
    mon = [r for r in metrics if r.get("reward/rm_success_auc")]
    for r in mon[:: max(1, len(mon) // 5)] + mon[-1:]:
        print(
            f"  step {r.get('train/rl_step')}: learned {float(r['reward/learned']):.3f} "
            f"success {float(r['env/success_rate']):.3f} auc {float(r['reward/rm_success_auc']):.3f} "
            f"hack_rate {r.get('reward/rm_hack_rate')}"
        )
    print(f"(cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
