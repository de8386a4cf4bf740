"""Multi-turn rollouts with and without the HF engine's prefix cache, side by side in one process.

    python bench/bench_prefix.py [--model smollm2|tiny] [--env tooluse|toolcalc] [--episodes 32]
                                 [--repeats 2] [--precision bf16-mixed] [--adapter lora|none]

Each setting runs the same episodes (the env's first training tasks, sampled at temperature 1
from the same seed) through ``EpisodeRunner``, the path training and validation take:
``rollout.engine.reuse_prefixes=true`` keeps each episode's KV cache from one turn to the next
and feeds only the new tokens, ``false`` prefills the whole conversation every turn. The two
alternate (on, off, on, off...) and each reports its best wall time, generated tokens/s, the
share of prompt tokens served from the cache, and how many episodes came out token-identical to
the other setting's (floating-point sums in another order can flip a sample: bf16 more often).
Paste the table into docs/benchmarks.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from bench_engine import cpu_name, load_policy, precision_context, toolcalc_suite

from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.engine import HFEngine
from agentrl.rollout.runner import EpisodeRunner


def make_suite(env: str):
    if env == "toolcalc":
        return toolcalc_suite(200), contextlib.nullcontext()
    from agentrl.envs.tooluse import ToolUse

    # the settings of experiment=smollm2_tooluse
    suite = ToolUse(
        num_train=200,
        num_val=10,
        num_test=10,
        max_turns=6,
        max_action_tokens=48,
        families=["value", "cost"],
    )
    return suite, suite


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2", choices=["tiny", "smollm2"])
    ap.add_argument("--env", default="tooluse", choices=["tooluse", "toolcalc"])
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache", default=".cache/models")
    ap.add_argument("--precision", default="bf16-mixed", choices=["32", "bf16-mixed"])
    ap.add_argument("--adapter", default="lora", choices=["none", "lora"])
    args = ap.parse_args()
    model, tok = load_policy(args.model, args.cache, args.adapter)
    model.eval()
    chat = ChatFormat(tok)
    suite, service = make_suite(args.env)
    results: dict[bool, dict] = {True: {"best": float("inf")}, False: {"best": float("inf")}}
    with service, precision_context(args.precision), torch.no_grad():
        tasks = suite.tasks("train")[: args.episodes]
        for _ in range(args.repeats):
            for reuse in (True, False):
                engine = HFEngine(reuse_prefixes=reuse)
                engine.bind(model, tok)
                runner = EpisodeRunner(engine, chat, suite, 2048)
                params = runner.sampling(1.0, 1.0, greedy=False)
                start = time.perf_counter()
                trajs = runner.run(
                    tasks, [0] * len(tasks), params, torch.Generator().manual_seed(0)
                )
                wall = time.perf_counter() - start
                r = results[reuse]
                r["best"] = min(r["best"], wall)
                r["trajs"] = trajs
                r["tokens"] = sum(sum(t.loss_mask) for t in trajs)
                r["turns"] = sum(len(t.turns) for t in trajs)
                r["reused"] = runner.metrics().get("rollout/prefix_reused_frac", 0.0)
    same = sum(
        a.token_ids == b.token_ids for a, b in zip(results[True]["trajs"], results[False]["trajs"])
    )
    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(
        f"model: {args.model}, adapter {args.adapter}, {args.precision}, env {args.env}, "
        f"{args.episodes} episodes, best of {args.repeats}; token-identical episodes: "
        f"{same}/{args.episodes}\n"
    )
    print(
        "| reuse_prefixes | turns | generated tokens | best wall s | tokens/s | prefix reused | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    off = results[False]
    for reuse in (True, False):
        r = results[reuse]
        print(
            f"| {str(reuse).lower()} | {r['turns']} | {r['tokens']} | {r['best']:.1f} | "
            f"{r['tokens'] / r['best']:.1f} | {r['reused']:.0%} | "
            f"{off['best'] / r['best']:.2f}x |"
        )


if __name__ == "__main__":
    main()
