"""``rollout.pipeline=sync`` vs ``overlap``, side by side in one process, on the default toolcalc
recipe and on ``env=external`` (``experiment=openai_agent``: an agent program per rollout
against the gateway).

    python bench/bench_overlap.py [--steps 6] [--tasks 4] [--warmstart-steps 200] [--seed 0]
        [--envs toolcalc,external]

For each env the two runs share every setting but ``rollout.pipeline`` (and the cached warm
start, trained by the first). The time compared is the RL loop's: the sum over steps of the
step's phase timers (``perf/<phase>_s``: rollout, which in overlap is the wait for the batch made
in the background, score, advantages, update, sync, log), without validation, warm start and
start-up. Also printed: the final validation success and the mean training reward, so that a
faster run that learns less shows. One seed, short runs: a smoke measurement, not the issue's
"wall-clock to the same validation success over 3 seeds". Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("rollout", "score", "advantages", "update", "sync", "log")
ENVS = {"toolcalc": [], "external": ["experiment=openai_agent", "env.timeout_s=300"]}


def config(args, env: str, pipeline: str, out: Path, cache: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *ENVS[env],
                f"rollout.pipeline={pipeline}",
                f"seed={args.seed}",
                f"data.steps={args.steps}",
                f"data.tasks_per_step={args.tasks}",
                f"data.num_val_tasks={args.val_tasks}",
                f"data.val_batch_size={args.val_tasks}",
                f"trainer.val_check_interval={args.steps}",
                f"warmstart.steps={args.warmstart_steps}",
                "validate_before_training=false",
                "callbacks.export=null",
            ],
        )
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(cache)
        cfg.trainer.enable_progress_bar = False
        cfg.callbacks.rich_progress = None
    return cfg


def measure(args, env: str, pipeline: str, tmp: Path, cache: Path) -> dict:
    from agentrl.train import run

    out = tmp / f"{env}-{pipeline}"
    run(config(args, env, pipeline, out, cache))
    with open(out / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]
    steps = [r for r in rows if "perf/rollout_s" in r]
    loop = sum(r.get(f"perf/{p}_s", 0.0) for r in steps for p in PHASES)
    val = [r["val/success_rate"] for r in rows if "val/success_rate" in r]
    rewards = [r["rollout/reward_mean"] for r in steps if "rollout/reward_mean" in r]
    return {
        "loop_s": loop,
        "steps": len(steps),
        "wait_s": sum(r["perf/rollout_s"] for r in steps),
        # the time rollouts took to make (overlap: in the thread, mostly during updates)
        "make_s": sum(r.get("pipeline/generate_s", r["perf/rollout_s"]) for r in steps),
        "update_s": sum(r.get("perf/update_s", 0.0) for r in steps),
        "val": val[-1] if val else float("nan"),
        "reward": sum(rewards) / max(len(rewards), 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--val-tasks", type=int, default=16)
    p.add_argument("--warmstart-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--envs", default="toolcalc,external")
    args = p.parse_args()
    print(
        "| env | pipeline | RL loop s (steps) | rollouts made s | waited for s | update s "
        "| loop speed-up | final val success | mean train reward |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        for env in args.envs.split(","):
            cache = Path(tmp) / f"cache-{env}"
            base = None
            for pipeline in ("sync", "overlap"):
                r = measure(args, env, pipeline, Path(tmp), cache)
                base = base or r["loop_s"]
                print(
                    f"| {env} | {pipeline} | {r['loop_s']:.1f} ({r['steps']}) | "
                    f"{r['make_s']:.1f} | {r['wait_s']:.1f} | {r['update_s']:.1f} | {base / r['loop_s']:.2f}x | "
                    f"{r['val']:.2f} | {r['reward']:.3f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
