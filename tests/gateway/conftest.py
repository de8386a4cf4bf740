"""Fixtures of the gateway tests: the tiny tokenizer and model, and a scripted engine."""

from __future__ import annotations

import pytest

from agentrl.rollout.engine import Generation, HFEngine


class ScriptedEngine:
    """Answers each prompt with the next scripted text (its canonical ids + end of turn) and
    records every prompt it was given."""

    def __init__(self, tokenizer, replies: list[str]):
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.prompts: list[list[int]] = []
        self.outputs: list[Generation] = []

    def generate(self, prompts, params, generator=None):
        out = []
        for p in prompts:
            self.prompts.append(list(p))
            text = self.replies[min(len(self.prompts) - 1, len(self.replies) - 1)]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = ids + [self.tokenizer.eos_token_id]
            gen = Generation(ids, [-0.25] * len(ids), "stop")
            self.outputs.append(gen)
            out.append(gen)
        return out


class RecordingEngine(HFEngine):
    """The real HF engine, remembering what it was given and what it produced."""

    def __init__(self):
        super().__init__(micro_batch_size=8)
        self.seen: list[tuple[list[int], list[int], list[float]]] = []

    def generate(self, prompts, params, generator=None, on_token=None):
        outs = super().generate(prompts, params, generator, on_token)
        for p, o in zip(prompts, outs):
            self.seen.append((list(p), list(o.token_ids), list(o.logprobs)))
        return outs


@pytest.fixture(scope="session")
def tiny():
    """The tiny model (its seeded random initialisation) and its tokenizer."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    model, tok = instantiate(OmegaConf.load(CONF / "model" / "tiny.yaml")).load()
    return model.eval(), tok


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]


CALC_TOOL = {
    "type": "function",
    "function": {
        "name": "calc",
        "description": "A op B",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
