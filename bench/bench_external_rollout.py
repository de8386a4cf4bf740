"""The rollout phase of one toolcalc batch three ways, side by side in one process: the in-process
env (``EpisodeRunner`` on ToolCalc), ``env=external`` with a program per rollout
(``examples/openai_agent/agent.py``) and ``env=external`` with the same agent as an entry point in
long-lived workers (``examples.openai_agent.agent:run``).

    python bench/bench_external_rollout.py [--tasks 8] [--group 8] [--repeats 3] [--workers 8]
        [--batch 8] [--warmstart-steps 800]

The recipe of ``experiment=openai_agent`` (= the toolcalc tasks of ``experiment=toolcalc_grpo``):
the same policy (the tiny model, warm-started, cached under AGENTRL_CACHE), the same
tasks (``--tasks`` train tasks x ``--group`` samples = the rollouts of one RL step), the same
sampling (temperature 1, one seed per repeat). The gateway batches up to ``--batch`` concurrent
completions (``env.gateway.max_batch_size``); programs/workers run ``--workers`` at once. Each
repeat runs the three in turn (the worker pool is started once, before, as in training); the
table has the median seconds of a rollout phase, the ratio to the in-process env, and what was
generated (so the work compared is comparable). Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]


def config(args, out: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=openai_agent",
                f"warmstart.steps={args.warmstart_steps}",
                f"env.max_concurrency={args.workers}",
                f"env.workers={args.workers}",
                f"env.gateway.max_batch_size={args.batch}",
                "env.timeout_s=300",
            ],
        )
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(out)
        cfg.trainer.enable_progress_bar = False
        cfg.callbacks.rich_progress = None
    return cfg


def runners(cfg, parts, policy, tokenizer):
    """name -> (runner, what to close)."""
    from agentrl.rollout.chat import ChatFormat
    from agentrl.rollout.runner import EpisodeRunner
    from agentrl.utils.instantiate import instantiate

    chat = ChatFormat(tokenizer, cfg.rollout.observation_role)
    engine = parts["engine"]
    engine.bind(policy, tokenizer)
    programs = parts["suite"]
    with open_dict(cfg):
        cfg.env.entry_point = "examples.openai_agent.agent:run"
    start = time.monotonic()
    workers = instantiate(cfg.env, "env")
    print(f"worker pool of {cfg.env.workers} started in {time.monotonic() - start:.1f}s")
    seq = cfg.rollout.max_seq_len
    return {
        "in-process (env=toolcalc)": (EpisodeRunner(engine, chat, programs.source, seq), None),
        "external, a program per rollout": (programs.make_runner(engine, chat, seq), programs),
        "external, entry point in workers": (workers.make_runner(engine, chat, seq), workers),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    # the recipe's warm start (800 steps; cached after the first run); fewer: a weaker policy
    ap.add_argument("--warmstart-steps", type=int, default=800)
    ap.add_argument("--out", default="outputs/bench_external_rollout")
    args = ap.parse_args()

    from agentrl.train import build_components, warm_start

    cfg = config(args, Path(args.out))
    parts = build_components(cfg)
    policy, tokenizer = parts["model_spec"].load()
    warm_start(cfg, parts, policy, tokenizer)
    policy.eval()
    made = runners(cfg, parts, policy, tokenizer)
    tasks = parts["suite"].tasks("train")[: args.tasks]
    batch = [t for t in tasks for _ in range(args.group)]
    groups = [i for i in range(len(tasks)) for _ in range(args.group)]
    seconds = {name: [] for name in made}
    stats = {}
    try:
        for r in range(args.repeats):
            for name, (runner, _) in made.items():
                params = runner.sampling(1.0, 1.0, greedy=False)
                gen = torch.Generator().manual_seed(r)
                start = time.monotonic()
                with torch.no_grad():
                    trajs = runner.run(batch, groups, params, gen)
                seconds[name].append(time.monotonic() - start)
                stats[name] = describe(trajs, len(batch))
                print(f"repeat {r}: {name}: {seconds[name][-1]:.1f}s {stats[name]}", flush=True)
    finally:
        for _, closer in made.values():
            if closer is not None:
                closer.close()
    table(args, seconds, stats)


def describe(trajs, n: int) -> dict:
    failed = sum(t.status == "failed" for t in trajs)
    return {
        "generated tokens / rollout": sum(t.num_generated for t in trajs) / n,
        "success": sum(bool(t.success) for t in trajs) / n,
        "failed": failed,
    }


def table(args, seconds: dict, stats: dict) -> None:
    base = statistics.median(next(iter(seconds.values())))
    print(
        f"\n{args.tasks} tasks x {args.group} samples = {args.tasks * args.group} rollouts, "
        f"{args.repeats} repeats, {args.workers} programs/workers at once, gateway batch "
        f"{args.batch}\n"
    )
    print("| rollout phase | median s | x in-process | generated tokens / rollout | success |")
    print("|---|---|---|---|---|")
    for name, secs in seconds.items():
        med = statistics.median(secs)
        s = stats[name]
        print(
            f"| {name} | {med:.1f} | {med / base:.2f} | {s['generated tokens / rollout']:.1f} "
            f"| {s['success']:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
