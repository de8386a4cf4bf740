"""The RolloutEngine contract (``agentrl.protocols.Engine``) and the in-process HF engine.

``generate(prompts, params) -> list[Generation]``: token ids in, token ids and the behaviour
log-probability of each sampled token out. Episodes are extended token by token by the caller.
``HFEngine.generate`` also takes ``on_token(i, token_id, logprob)``, called from its decoding
loop as each step samples prompt ``i``'s next token (it declares ``streams_tokens``: the gateway
streams with it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from agentrl.batching import base_forward, takes_logits_to_keep
from agentrl.protocols import Engine


@dataclass
class SamplingParams:
    """How to sample one turn. greedy=True ignores temperature/top_p (validation decoding)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    stop_token_ids: list[int] = field(default_factory=list)
    # a sequence ends once its decoded text contains one of these (the tokens stay in it)
    stop_strings: list[str] = field(default_factory=list)


@dataclass
class Generation:
    """token_ids: the sampled ids (stop token included); logprobs: one per id; finish: why it
    stopped ("stop" on a stop token or sequence, "length" at max_new_tokens)."""

    token_ids: list[int]
    logprobs: list[float]
    finish: str


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row from [B, V] logits; return ids [B] and their log-probs [B] under the
    distribution actually sampled from (tempered; before top-p truncation)."""
    logits = logits.float()
    if params.greedy:
        logp = torch.log_softmax(logits, dim=-1)
        ids = logits.argmax(-1)
        return ids, logp.gather(-1, ids[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / params.temperature, dim=-1)
    probs = logp.exp()
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < params.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return ids, logp.gather(-1, ids[:, None]).squeeze(-1)


class HFEngine(Engine):
    """Batched generation with the trainer's own model (shared weights) and a KV cache.

    micro_batch_size: at most this many prompts go through one forward pass.
    """

    name = "hf"
    # generate takes on_token (the gateway streams with it)
    streams_tokens = True
    # holds the trainer's own model: rollout.pipeline=overlap gives its thread a copy
    shares_weights = True

    def __init__(self, micro_batch_size: int = 256):
        if micro_batch_size < 1:
            raise ValueError(
                f"rollout.engine.micro_batch_size must be >= 1, got {micro_batch_size}"
            )
        self.micro_batch_size = micro_batch_size
        self.model = None
        self.tokenizer = None
        self.pad_id = 0

    def bind(self, model, tokenizer) -> None:
        """Share the policy's weights; called once by the module."""
        self.model = model
        self.tokenizer = tokenizer
        params = inspect.signature(base_forward(model)).parameters
        # transformers >= 5.2x calls the KV cache `cache`; earlier releases `past_key_values`
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = takes_logits_to_keep(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def sync(self, model) -> None:
        """New weights reach the engine: a no-op, the engine holds the trainer's model."""

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        generator: torch.Generator | None = None,
        on_token: Callable[[int, int, float], None] | None = None,
    ) -> list[Generation]:
        """on_token(i, token_id, logprob): called as each step samples prompt ``i``'s next token
        (from this thread, in order; nothing for a row once it has stopped)."""
        out: list[Generation] = []
        for start in range(0, len(prompts), self.micro_batch_size):
            chunk = prompts[start : start + self.micro_batch_size]
            out.extend(self._generate(chunk, params, generator, on_token, start))
        return out

    def _generate(self, prompts, params, generator, on_token=None, offset=0) -> list[Generation]:
        model = self.model
        device = next(model.parameters()).device
        ids, attn = _left_pad(prompts, self.pad_id, device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        batch = len(prompts)
        stop_ids = torch.tensor(params.stop_token_ids or [-1], device=device)
        tokens = [[] for _ in range(batch)]
        logps = [[] for _ in range(batch)]
        finish = ["length"] * batch
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        cache = None
        step_ids, step_pos = ids, positions
        for _ in range(params.max_new_tokens):
            kwargs = {self._cache_arg: cache, "use_cache": True}
            if self._logits_to_keep:
                kwargs["logits_to_keep"] = 1
            o = model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos, **kwargs)
            cache = getattr(o, self._cache_arg)
            nxt, lp = sample_next(o.logits[:, -1, :], params, generator)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            for i in (~done).nonzero().flatten().tolist():
                tokens[i].append(int(nxt[i]))
                logps[i].append(float(lp[i]))
                if on_token is not None:
                    on_token(offset + i, tokens[i][-1], logps[i][-1])
                if self._stopped(tokens[i], params, self.tokenizer):
                    finish[i] = "stop"
            newly = torch.isin(nxt, stop_ids) & ~done
            done = done | newly | torch.tensor([f == "stop" for f in finish], device=device)
            if bool(done.all()):
                break
            attn = torch.cat([attn, attn.new_ones(batch, 1)], dim=-1)
            step_pos = step_pos[:, -1:] + 1
            step_ids = nxt[:, None]
        return [Generation(t, lp, f) for t, lp, f in zip(tokens, logps, finish)]

    @staticmethod
    def _stopped(tokens: list[int], params: SamplingParams, tokenizer) -> bool:
        if tokens[-1] in params.stop_token_ids:
            return True
        if not params.stop_strings:
            return False
        tail = tokenizer.decode(tokens[-8:], skip_special_tokens=False)
        return any(s in tail for s in params.stop_strings)
