"""Rollout throughput of the vllm engine vs the hf engine, side by side in one process.

    .venv-vllm/bin/python bench/bench_vllm.py [--models tiny smollm2] [--batches 1 8 32 64]

Both engines get the same toolcalc prompts (the chat-formatted task of each episode), sample
at temperature 1 with no stop token or string, and generate exactly ``--new-tokens`` tokens per
prompt, so tokens/s compare like for like. For each model and batch size the two engines run
interleaved, best of ``--repeats`` after a warm-up. The vllm engine is the one
``rollout=vllm`` builds (colocated, in-process, eager, float32 like the trainer). Results are
printed as a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch
from bench_engine import load, toolcalc_suite

from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.engine import HFEngine, SamplingParams
from agentrl.rollout.vllm_engine import VLLMEngine


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_model(name: str, args, cache: str) -> list[tuple]:
    model, tok = load(name, args.cache)
    model.eval()
    suite = toolcalc_suite(max(args.batches) + 10)
    chat = ChatFormat(tok)
    prompts = [chat.prompt_ids(suite.system_prompt, t.prompt) for t in suite.tasks("train")]
    hf = HFEngine()
    hf.bind(model, tok)
    start = time.perf_counter()
    vllm = VLLMEngine(cache_dir=cache, max_model_len=1024, kv_cache_gb=args.kv_cache_gb)
    vllm.bind(model, tok)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    vllm.sync(model)
    push = time.perf_counter() - start
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0)
    rows = []
    for batch in args.batches:
        batch_prompts = prompts[:batch]
        counted = {}

        def run(engine, key, batch_prompts=batch_prompts, counted=counted):
            gens = engine.generate(batch_prompts, params, torch.Generator().manual_seed(0))
            counted[key] = sum(len(g.token_ids) for g in gens)

        with torch.no_grad():
            t_hf = best_time(lambda: run(hf, "hf"), args.repeats)
            t_vllm = best_time(lambda: run(vllm, "vllm"), args.repeats)
        assert counted["hf"] == counted["vllm"] == batch * args.new_tokens
        rows.append((name, batch, counted["hf"] / t_hf, counted["vllm"] / t_vllm))
        print(f"  {name} batch {batch}: hf {rows[-1][2]:,.0f} vllm {rows[-1][3]:,.0f} tok/s")
    vllm.close()
    print(f"  {name}: vllm engine start-up {startup:.1f} s, weight push {push:.3f} s")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 64])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--cache", default=".cache/models")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as cache:
        for name in args.models:
            rows.extend(bench_model(name, args, cache))
    import vllm

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}, vllm {vllm.__version__}"
    )
    print(f"new tokens {args.new_tokens} per prompt, best of {args.repeats}\n")
    print("| model | batch | hf tokens/s | vllm tokens/s | vllm / hf |")
    print("|---|---|---|---|---|")
    for name, batch, hf, vl in rows:
        print(f"| {name} | {batch} | {hf:,.0f} | {vl:,.0f} | {vl / hf:.2f} |")


if __name__ == "__main__":
    main()
