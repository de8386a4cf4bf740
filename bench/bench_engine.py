"""Side-by-side throughput of agentrl's paths against bare PyTorch/transformers loops.

    python bench/bench_engine.py [--model tiny|smollm2] [--batch 64] [--repeats 3]
                                 [--precision 32 bf16-mixed] [--adapter none|lora]

rollout: HFEngine.generate (KV cache, behaviour log-probs, stop handling) vs a bare
         ``model.generate`` on the same prompts, same max_new_tokens, sampling.
update:  the GRPO update path (per-token log-probs, clipped loss, backward, clip, AdamW step) vs
         a bare forward + cross-entropy + backward + AdamW step on the same token batch.
Ratios are agentrl / bare (1.0 = as fast as the bare loop), each pair in the same precision:
``32`` (float32) or ``bf16-mixed`` (bf16 autocast on float32 weights, what Lightning's
``trainer.precision=bf16-mixed`` does); several precisions run side by side in one process, and
the last column compares each with the first. Results are printed as a Markdown table; paste
them into docs/benchmarks.md with the machine they ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import random
import time

import torch
from omegaconf import OmegaConf

from agentrl.algorithms.grpo import GRPO
from agentrl.batching import collate, model_logprobs
from agentrl.envs.toolcalc import ToolCalc
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.engine import HFEngine
from agentrl.rollout.runner import EpisodeRunner
from agentrl.utils.instantiate import instantiate


def load(model_name: str, cache: str):
    cfg = OmegaConf.load(f"conf/model/{'tiny' if model_name == 'tiny' else 'smollm2_135m'}.yaml")
    if "cache_dir" in cfg:
        cfg.cache_dir = cache
    return instantiate(cfg).load()


def load_policy(model_name: str, cache: str, adapter: str):
    """``load`` with the LoRA adapter of conf/adapter/lora.yaml on top when ``adapter`` is lora."""
    torch.manual_seed(0)
    model, tok = load(model_name, cache)
    if adapter == "lora":
        from agentrl.models.factory import apply_adapter

        model = apply_adapter(model, OmegaConf.load("conf/adapter/lora.yaml"))
    return model, tok


def toolcalc_suite(num_train: int) -> ToolCalc:
    """The toolcalc tasks these benchmarks were measured on (up to 3 operations, precedence
    order, correct demonstrations), whatever the constructor's defaults become."""
    return ToolCalc(
        num_train=num_train,
        num_val=10,
        num_test=10,
        max_ops=3,
        left_to_right=False,
        guess_prob=0.0,
        mistake_prob=0.0,
    )


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_rollout(model, tok, batch: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    suite = toolcalc_suite(max(batch, 100))
    chat = ChatFormat(tok)
    prompts = [chat.prompt_ids(suite.system_prompt, t.prompt) for t in suite.tasks("train")[:batch]]
    engine = HFEngine()
    engine.bind(model, tok)
    runner = EpisodeRunner(engine, chat, suite, 1024)
    params = runner.sampling(1.0, 1.0, greedy=False)
    params.max_new_tokens, params.stop_token_ids, params.stop_strings = new_tokens, [], []
    counted = {}

    def ours():
        gens = engine.generate(prompts, params, torch.Generator().manual_seed(0))
        counted["ours"] = sum(len(g.token_ids) for g in gens)

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    attn = (
        torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]
    ).long()

    def bare():
        out = model.generate(
            input_ids=ids,
            attention_mask=attn,
            do_sample=True,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=tok.pad_token_id,
            top_k=0,
        )
        counted["bare"] = (out.shape[1] - width) * out.shape[0]

    with torch.no_grad():
        t_ours, t_bare = timed(ours, repeats), timed(bare, repeats)
    return counted["ours"] / t_ours, counted["bare"] / t_bare


def bench_update(model, tok, batch: int, repeats: int) -> tuple[float, float]:
    suite = toolcalc_suite(max(batch, 100))
    chat = ChatFormat(tok)
    runner = EpisodeRunner(HFEngine(), chat, suite, 1024)
    rng = random.Random(0)
    demos = [runner.demonstration(t, suite.oracle(t, rng)) for t in suite.tasks("train")[:batch]]
    tb = collate(demos, tok.pad_token_id)
    tokens = int(tb.attention_mask.sum())
    algo = GRPO(group_size=2, kl_coef=0.0, minibatches=1)
    adv = torch.randn(batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    with torch.no_grad():
        old = model_logprobs(model, tb)[0]

    def ours():
        opt.zero_grad()
        logp, _ = model_logprobs(model, tb)
        loss, _ = algo.loss(logp, old, None, adv, tb.loss_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def bare():
        opt.zero_grad()
        labels = tb.input_ids.masked_fill(tb.attention_mask == 0, -100)
        model(
            input_ids=tb.input_ids, attention_mask=tb.attention_mask, labels=labels
        ).loss.backward()
        opt.step()

    return tokens / timed(ours, repeats), tokens / timed(bare, repeats)


def precision_context(precision: str):
    """The autocast Lightning's precision plugin puts around a step (none for 32)."""
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default=".cache/models")
    ap.add_argument("--precision", nargs="+", default=["32"], choices=["32", "bf16-mixed"])
    ap.add_argument("--adapter", default="none", choices=["none", "lora"])
    args = ap.parse_args()
    model, tok = load_policy(args.model, args.cache, args.adapter)
    rows = []
    for precision in args.precision:
        with precision_context(precision):
            model.eval()
            r_ours, r_bare = bench_rollout(model, tok, args.batch, args.new_tokens, args.repeats)
            model.train()
            u_ours, u_bare = bench_update(model, tok, args.batch, args.repeats)
        rows.append((precision, r_ours, r_bare, u_ours, u_bare))
    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(
        f"model: {args.model}, adapter {args.adapter}, batch {args.batch}, "
        f"new tokens {args.new_tokens}, best of {args.repeats}\n"
    )
    first = rows[0]
    print(f"| path | precision | agentrl tokens/s | bare tokens/s | ratio | vs {first[0]} |")
    print("|---|---|---|---|---|---|")
    for precision, r_ours, r_bare, u_ours, u_bare in rows:
        print(
            f"| rollout (HFEngine vs model.generate) | {precision} | {r_ours:,.0f} | "
            f"{r_bare:,.0f} | {r_ours / r_bare:.2f} | {r_ours / first[1]:.2f}x |"
        )
        print(
            f"| update (GRPO step vs fwd+bwd+step) | {precision} | {u_ours:,.0f} | "
            f"{u_bare:,.0f} | {u_ours / u_bare:.2f} | {u_ours / first[3]:.2f}x |"
        )


if __name__ == "__main__":
    main()
