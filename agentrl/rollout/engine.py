"""The RolloutEngine contract (``agentrl.protocols.Engine``) and the in-process HF engine.

``generate(prompts, params) -> list[Generation]``: token ids in, token ids and the behaviour
log-probability of each sampled token out. Episodes are extended token by token by the caller.
``HFEngine.generate`` also takes ``on_token(i, token_id, logprob)``, called from its decoding
loop as each step samples prompt ``i``'s next token (it declares ``streams_tokens``: the gateway
streams with it), and ``prefixes``, a :class:`PrefixCache` that keeps the KV cache of each
sequence a call ended with, so that the next turn of the same episode (the old sequence, its last
token, the observation) is prefilled from the first token not yet seen, not from its start (it
declares ``reuses_prefixes``: the episode runner passes one per ``run``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

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


class PrefixCache:
    """The per-layer keys and values of the sequences one ``generate`` call ended with (prompt and
    generated tokens but the last), for the next call: a prompt that extends one of them reuses
    its cache. Valid for one set of weights and one engine: the runner makes one per episode
    batch. ``reused`` and ``fed`` count prompt tokens served from it and run through the model.

    A lookup costs O(stored lengths x ``TAIL``) per prompt, not O(stored lengths x prompt length):
    entries are found by their length and last ``TAIL`` tokens, and only a hit is compared whole.
    """

    TAIL = 8

    def __init__(self):
        # (length, last TAIL tokens) -> [(the sequence, its per-layer keys and values)]
        self.entries: dict[tuple[int, tuple[int, ...]], list[tuple[list[int], list]]] = {}
        self._lengths: list[int] = []
        self._next: dict[tuple[int, tuple[int, ...]], list[tuple[list[int], list]]] = {}
        self.reused = 0
        self.fed = 0

    def _key(self, seq: list[int], n: int) -> tuple[int, tuple[int, ...]]:
        return n, tuple(seq[max(n - self.TAIL, 0) : n])

    def match(self, prompt: list[int]) -> tuple[int, list | None]:
        """The longest stored sequence that is a proper prefix of ``prompt`` (its length and
        per-layer [heads, length, dim] keys and values), or (0, None)."""
        for n in self._lengths:
            if n < len(prompt):
                for seq, kv in self.entries.get(self._key(prompt, n), ()):
                    if prompt[:n] == seq:
                        return n, kv
        return 0, None

    def keep(self, seq: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._next.setdefault(self._key(seq, len(seq)), []).append((list(seq), kv))

    def turn(self) -> None:
        """What this call kept replaces what the last one did (an episode's older turns are
        prefixes of its newer ones: only the newest is matched again)."""
        self.entries, self._next = self._next, {}
        self._lengths = sorted({n for n, _ in self.entries}, reverse=True)


def _plain_layers(cache) -> bool:
    """Whether every layer of ``cache`` is a plain full-attention DynamicLayer (the only kind
    whose columns can be cut out and stitched into another batch)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class HFEngine(Engine):
    """Batched generation with the trainer's own model (shared weights) and a KV cache.

    micro_batch_size: at most this many prompts go through one forward pass.
    reuse_prefixes: keep each episode's KV cache from one turn to the next (``PrefixCache``);
    false prefills the whole conversation every turn.
    """

    name = "hf"
    # generate takes on_token (the gateway streams with it)
    streams_tokens = True
    # holds the trainer's own model: rollout.pipeline=overlap gives its thread a copy
    shares_weights = True

    def __init__(self, micro_batch_size: int = 256, reuse_prefixes: bool = True):
        if micro_batch_size < 1:
            raise ValueError(
                f"rollout.engine.micro_batch_size must be >= 1, got {micro_batch_size}"
            )
        self.micro_batch_size = micro_batch_size
        # generate takes prefixes= (the runner passes one PrefixCache per episode batch)
        self.reuses_prefixes = bool(reuse_prefixes)
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
        prefixes: PrefixCache | None = None,
    ) -> list[Generation]:
        """on_token(i, token_id, logprob): called as each step samples prompt ``i``'s next token
        (from this thread, in order; nothing for a row once it has stopped). prefixes: reuse
        and keep KV caches across calls (ignored unless ``reuses_prefixes``)."""
        if not self.reuses_prefixes:
            prefixes = None
        out: list[Generation] = []
        for start in range(0, len(prompts), self.micro_batch_size):
            chunk = prompts[start : start + self.micro_batch_size]
            out.extend(self._generate(chunk, params, generator, on_token, start, prefixes))
        if prefixes is not None:
            prefixes.turn()
        return out

    def _prefill(self, prompts, prefixes, device):
        """The first forward's inputs: ids and positions [B, S], the attention mask [B, P + S]
        and the cache of its first P columns (None when nothing is reused). Row i's tokens that
        a stored sequence covers come from the cache (right-aligned in the P columns), its other
        tokens are fed (right-aligned in the S columns); the columns between are masked."""
        matches = [prefixes.match(p) if prefixes is not None else (0, None) for p in prompts]
        past = max(n for n, _ in matches)
        if prefixes is not None:
            prefixes.reused += sum(n for n, _ in matches)
            prefixes.fed += sum(len(p) - n for p, (n, _) in zip(prompts, matches))
        if past == 0:
            ids, attn = _left_pad(prompts, self.pad_id, device)
            return ids, (attn.cumsum(-1) - 1).clamp(min=0), attn, None
        batch = len(prompts)
        width = max(len(p) - n for p, (n, _) in zip(prompts, matches))
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((batch, past + width), dtype=torch.long)
        layers = next(kv for _, kv in matches if kv is not None)
        cache = [
            (
                k0.new_zeros((batch, *k0.shape[:-2], past, k0.shape[-1])),
                v0.new_zeros((batch, *v0.shape[:-2], past, v0.shape[-1])),
            )
            for k0, v0 in layers
        ]
        for i, (p, (n, kv)) in enumerate(zip(prompts, matches)):
            ids[i, width - (len(p) - n) :] = torch.tensor(p[n:], dtype=torch.long)
            attn[i, past + width - (len(p) - n) :] = 1
            if n:
                attn[i, past - n : past] = 1
                for (k, v), (k0, v0) in zip(cache, kv):
                    k[i, ..., past - n :, :] = k0
                    v[i, ..., past - n :, :] = v0
        positions = (attn.cumsum(-1) - 1).clamp(min=0)[:, past:]
        return ids.to(device), positions.to(device), attn.to(device), DynamicCache(cache)

    @staticmethod
    def _keep(prefixes, prompts, tokens, attn, cache) -> None:
        """Store each row's cache of its prompt and generated tokens but the last (never fed):
        the columns its attention mask marks, in order."""
        for i, (p, t) in enumerate(zip(prompts, tokens)):
            if not t:
                continue
            n = len(p) + len(t) - 1
            cols = attn[i].nonzero()[:n, 0]
            a, b = int(cols[0]), int(cols[-1]) + 1
            if b - a == n:  # contiguous: a view
                kv = [(la.keys[i, ..., a:b, :], la.values[i, ..., a:b, :]) for la in cache.layers]
            else:
                kv = [
                    (la.keys[i].index_select(-2, cols), la.values[i].index_select(-2, cols))
                    for la in cache.layers
                ]
            prefixes.keep(p + t[:-1], kv)

    def _generate(
        self, prompts, params, generator, on_token=None, offset=0, prefixes=None
    ) -> list[Generation]:
        model = self.model
        device = next(model.parameters()).device
        ids, positions, attn, cache = self._prefill(prompts, prefixes, device)
        batch = len(prompts)
        stop_ids = torch.tensor(params.stop_token_ids or [-1], device=device)
        tokens = [[] for _ in range(batch)]
        logps = [[] for _ in range(batch)]
        finish = ["length"] * batch
        done = torch.zeros(batch, dtype=torch.bool, device=device)
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
        if prefixes is not None and _plain_layers(cache):
            self._keep(prefixes, prompts, tokens, attn, cache)
        return [Generation(t, lp, f) for t, lp, f in zip(tokens, logps, finish)]

    @staticmethod
    def _stopped(tokens: list[int], params: SamplingParams, tokenizer) -> bool:
        if tokens[-1] in params.stop_token_ids:
            return True
        if not params.stop_strings:
            return False
        tail = tokenizer.decode(tokens[-8:], skip_special_tokens=False)
        return any(s in tail for s in params.stop_strings)
