"""The rollout phase of one toolcalc batch three ways, side by side in one process: the in-process
env (``EpisodeRunner`` on ToolCalc), ``env=external`` with a program per rollout
(``examples/openai_agent/agent.py``) and ``env=external`` with the same agent as an entry point in
long-lived workers (``examples.openai_agent.agent:run``).

    python bench/bench_external_rollout.py [--tasks 8] [--group 8] [--repeats 3] [--workers 64]
        [--batch 64] [--window 1.0] [--warmstart-steps 800] [--arms in-process,programs,workers]

The recipe of ``experiment=openai_agent`` (= the toolcalc tasks of ``experiment=toolcalc_grpo``):
the same policy (the tiny model, warm-started, cached under AGENTRL_CACHE), the same
tasks (``--tasks`` train tasks x ``--group`` samples = the rollouts of one RL step), the same
sampling (temperature 1, one seed per repeat). The gateway batches up to ``--batch`` concurrent
completions (``env.gateway.max_batch_size``), waiting up to ``--window`` seconds
(``env.gateway.batch_window_s``) for every running rollout's request; programs/workers run
``--workers`` at once (64 = every rollout of the step, as the in-process env runs them). Each
repeat runs the ``--arms`` in turn, in reverse order every other repeat (the worker pool is
started once, before, as in training); the table has the seconds of each repeat's rollout
phase, their median, the median of the repeats' ratios to the in-process env (the arms of a
repeat run back to back), the engine calls per phase, and what was generated (so the work
compared is comparable). Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
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
                f"env.gateway.batch_window_s={args.window}",
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


ARMS = {
    "in-process": "in-process (env=toolcalc)",
    "programs": "external, a program per rollout",
    "workers": "external, entry point in workers",
}


def runners(cfg, parts, policy, tokenizer, arms: list[str]):
    """name -> (runner, what to close), for the ``arms`` asked."""
    from agentrl.rollout.chat import ChatFormat
    from agentrl.rollout.runner import EpisodeRunner
    from agentrl.utils.instantiate import instantiate

    chat = ChatFormat(tokenizer, cfg.rollout.observation_role)
    engine = parts["engine"]
    engine.bind(policy, tokenizer)
    programs = parts["suite"]
    seq = cfg.rollout.max_seq_len
    made = {}
    if "in-process" in arms:
        made[ARMS["in-process"]] = (EpisodeRunner(engine, chat, programs.source, seq), None)
    if "programs" in arms:
        made[ARMS["programs"]] = (programs.make_runner(engine, chat, seq), programs)
    if "workers" in arms:
        with open_dict(cfg):
            cfg.env.entry_point = "examples.openai_agent.agent:run"
        start = time.monotonic()
        workers = instantiate(cfg.env, "env")
        print(f"worker pool of {cfg.env.workers} started in {time.monotonic() - start:.1f}s")
        made[ARMS["workers"]] = (workers.make_runner(engine, chat, seq), workers)
    return made


class Calls:
    """Counts the engine's ``generate`` calls (the batches a rollout phase was generated in)."""

    def __init__(self, engine):
        self.n, self._generate = 0, engine.generate
        engine.generate = self

    def __call__(self, *args, **kwargs):
        self.n += 1
        return self._generate(*args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--arms", default="in-process,programs,workers")
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
    arms = args.arms.split(",")
    if arms[0] != "in-process" or not set(arms) <= set(ARMS):
        ap.error(f"--arms: in-process first, then any of {list(ARMS)[1:]}, got {args.arms!r}")
    calls = Calls(parts["engine"])
    made = runners(cfg, parts, policy, tokenizer, arms)
    tasks = parts["suite"].tasks("train")[: args.tasks]
    batch = [t for t in tasks for _ in range(args.group)]
    groups = [i for i in range(len(tasks)) for _ in range(args.group)]
    seconds = {name: [] for name in made}
    stats = {}
    try:
        for r in range(args.repeats):
            order = list(made.items())
            for name, (runner, _) in order if r % 2 == 0 else order[::-1]:
                params = runner.sampling(1.0, 1.0, greedy=False)
                gen = torch.Generator().manual_seed(r)
                calls.n = 0
                start = time.monotonic()
                with torch.no_grad():
                    trajs = runner.run(batch, groups, params, gen)
                seconds[name].append(time.monotonic() - start)
                stats[name] = {**describe(trajs, len(batch)), "engine calls": calls.n}
                print(f"repeat {r}: {name}: {seconds[name][-1]:.1f}s {stats[name]}", flush=True)
                for error, n in Counter(t.error for t in trajs if t.status == "failed").items():
                    print(f"  failed {n}x: {error}", flush=True)
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
    base = next(iter(seconds.values()))
    print(
        f"\n{args.tasks} tasks x {args.group} samples = {args.tasks * args.group} rollouts, "
        f"{args.repeats} repeats, {args.workers} programs/workers at once, gateway batch "
        f"{args.batch}, window {args.window:g} s\n"
    )
    print(
        "| rollout phase | seconds per repeat | median s | x in-process | engine calls "
        "| generated tokens / rollout | success |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, secs in seconds.items():
        med = statistics.median(secs)
        # the median of each repeat's ratio (the two arms of a repeat ran back to back)
        ratio = statistics.median(x / b for x, b in zip(secs, base))
        s = stats[name]
        print(
            f"| {name} | {', '.join(f'{x:.1f}' for x in secs)} | {med:.1f} | {ratio:.2f} "
            f"| {s['engine calls']} | {s['generated tokens / rollout']:.1f} | {s['success']:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
