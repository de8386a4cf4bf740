"""Fixtures of the gateway tests: the tiny tokenizer and model, and a scripted engine."""

from __future__ import annotations

import pytest

from agentrl.protocols import Engine
from agentrl.rollout.engine import Generation, HFEngine


class ScriptedEngine(Engine):
    """Answers each prompt with the next scripted text (its canonical ids + end of turn) and
    records every prompt it was given."""

    name = "scripted"

    def __init__(self, tokenizer, replies: list[str]):
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.prompts: list[list[int]] = []
        self.outputs: list[Generation] = []
        # the size of each engine call, in order
        self.batches: list[int] = []

    def generate(self, prompts, params, generator=None):
        self.batches.append(len(prompts))
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


# The warm start of the end-to-end gateway tests: one-operation tasks, demonstrations that always
# call calc, 400 steps (26% greedy held-out success on toolcalc, measured). Its policy copies
# operands and writes canonical tags, so an agent's calls extend each other (one sequence per
# conversation); the smoke warm start's (2 steps) near-random text re-tokenizes differently and
# splits every call (measured: 6.0 segments per rollout of 6 calls).
WARM = [
    "experiment=openai_agent",
    "env.tasks.max_ops=1",
    "env.tasks.guess_prob=0.0",
    "env.tasks.num_train=800",
    "env.tasks.num_val=100",
    "env.tasks.num_test=100",
    "warmstart.steps=400",
    "warmstart.num_demos=800",
    "warmstart.batch_size=16",
]


@pytest.fixture(scope="session")
def warm_cache(shared_cache):
    """The session's cache (tests/conftest.py ``shared_cache``): the WARM warm start is trained
    once, then loaded by every end-to-end gateway test, make_cfg's (test_responses.py) too."""
    return shared_cache


@pytest.fixture
def warm_cfg(tmp_path, warm_cache):
    """warm_cfg(*overrides, run="run") -> the WARM config (+ overrides) writing under tmp_path,
    its warm start from the shared cache."""
    from tests.conftest import compose_config

    def _make(*overrides: str, run: str = "run"):
        return compose_config([*WARM, *overrides], tmp_path / run, warm_cache)

    return _make
