"""Time to first token vs the whole turn, through the gateway with ``stream: true``.

    python bench/bench_gateway_streaming.py [--models tiny smollm2] [--max-tokens 128] [--repeats 3]

For each model: a gateway on the HF engine (``serve_in_thread``), the official ``openai`` client
streaming a chat completion and a Responses request (greedy), timed from sending the request to
the first text delta (TTFT) and to the end of the stream (turn). The same with an engine that
returns whole turns (the HF engine without its token callback: the gateway then replays the turn,
as it did for every engine before real streaming, and still does for vLLM) shows what streaming
changes. Medians over ``--repeats``. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import openai
import torch
from bench_engine import cpu_name, load

from agentrl.gateway.server import Gateway
from agentrl.gateway.toolcalls import TagFormat
from agentrl.rollout.engine import HFEngine

PROMPTS = {
    "system": "You are a helpful assistant.",
    "user": "Write a short story about a robot who learns to paint.",
}


class WholeTurns(HFEngine):
    """The HF engine as an engine that cannot stream: whole turns only (the gateway replays)."""

    def generate(self, prompts, params, generator=None):
        return super().generate(prompts, params, generator)


def timed_stream(client: openai.OpenAI, api: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first text delta, seconds to the end, text deltas) of one request."""
    messages = [
        {"role": "system", "content": PROMPTS["system"]},
        {"role": "user", "content": PROMPTS["user"]},
    ]
    start = time.perf_counter()
    first, deltas = None, 0
    if api == "chat":
        events = client.chat.completions.create(
            model="m", messages=messages, stream=True, temperature=0, max_tokens=max_tokens
        )
        for chunk in events:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas += 1
                first = first or time.perf_counter()
    else:
        events = client.responses.create(
            model="m",
            instructions=PROMPTS["system"],
            input=PROMPTS["user"],
            stream=True,
            temperature=0,
            max_output_tokens=max_tokens,
        )
        for event in events:
            if event.type == "response.output_text.delta":
                deltas += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    return (first or end) - start, end - start, deltas


def bench_model(name: str, cache: str, max_tokens: int, repeats: int) -> list[tuple]:
    model, tok = load(name, cache)
    model.eval()
    rows = []
    for engine_cls, mode in ((HFEngine, "streamed"), (WholeTurns, "replayed")):
        engine = engine_cls()
        engine.bind(model, tok)
        gw = Gateway(engine, tok, TagFormat(), max_tokens=max_tokens, max_seq_len=2048)
        gw.start().serve_in_thread()
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.token, max_retries=0)
        try:
            for api in ("chat", "responses"):  # warm up (the client imports lazily)
                timed_stream(client, api, 4)
            for api in ("chat", "responses"):
                runs = [timed_stream(client, api, max_tokens) for _ in range(repeats)]
                ttft = statistics.median(r[0] for r in runs)
                turn = statistics.median(r[1] for r in runs)
                rows.append((name, api, mode, ttft, turn, runs[0][2]))
        finally:
            gw.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default=".cache/models")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        rows += bench_model(name, args.cache, args.max_tokens, args.repeats)
        print(f"{name}: {rows[-4:]}", flush=True)  # so far, in case the rest takes too long
    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"max_tokens {args.max_tokens}, greedy, median of {args.repeats}\n")
    print(
        "| model | API | stream | time to first token (s) | turn (s) | TTFT / turn | text deltas |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, api, mode, ttft, turn, deltas in rows:
        print(
            f"| {name} | {api} | {mode} | {ttft:.3f} | {turn:.3f} | {ttft / turn:.1%} | {deltas} |"
        )


if __name__ == "__main__":
    main()
