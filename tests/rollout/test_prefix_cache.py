"""The HF engine's prefix cache: a turn that extends an earlier one is prefilled from its first new
token, and samples exactly what a full prefill would (tokens and behaviour log-probs)."""

import pytest
import torch

from agentrl.envs.toolcalc import ToolCalc
from agentrl.models.factory import TinyModel
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.engine import HFEngine, PrefixCache, SamplingParams
from agentrl.rollout.runner import EpisodeRunner


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tok = TinyModel(
        hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128
    ).load()
    model.eval()
    return model, tok


def engine_of(tiny, **kw):
    engine = HFEngine(**kw)
    engine.bind(*tiny)
    return engine


def forward_logprobs(model, prompt, gen, temperature):
    ids = torch.tensor([prompt + gen.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(gen.token_ids)[:, None])[:, 0]


@pytest.mark.parametrize("micro_batch_size", [256, 2])
def test_second_turn_reuses_the_first_and_samples_what_a_full_prefill_does(tiny, micro_batch_size):
    model, tok = tiny
    prompts = [
        tok("Compute 1+2")["input_ids"],
        tok("Compute (12+7)*3-5 now please")["input_ids"],
        tok("Compute 4*4")["input_ids"],
    ]
    params = SamplingParams(max_new_tokens=5, greedy=True)
    cached = engine_of(tiny, micro_batch_size=micro_batch_size)
    store = PrefixCache()
    first = cached.generate(prompts, params, prefixes=store)
    # the next turn: each episode's sequence, an observation of a different length per row, and
    # one new episode that has nothing stored
    obs = [tok(" = 3.")["input_ids"], tok(" result: 14 and more")["input_ids"], [5]]
    turn2 = [p + g.token_ids + o for p, g, o in zip(prompts, first, obs)]
    turn2.append(tok("Compute 9-8")["input_ids"])
    params2 = SamplingParams(max_new_tokens=6, temperature=0.7)
    got = cached.generate(turn2, params2, torch.Generator().manual_seed(3), prefixes=store)
    # everything but the new tokens of the three old episodes came from the cache
    assert store.reused == sum(len(p) + len(g.token_ids) - 1 for p, g in zip(prompts, first))
    full = engine_of(tiny, micro_batch_size=micro_batch_size, reuse_prefixes=False)
    want = full.generate(turn2, params2, torch.Generator().manual_seed(3), prefixes=PrefixCache())
    for p, g, w in zip(turn2, got, want):
        assert g.token_ids == w.token_ids
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=1e-5)
        # and the recorded behaviour log-probs are the model's own on the whole sequence
        assert torch.allclose(
            forward_logprobs(model, p, g, 0.7), torch.tensor(g.logprobs), atol=1e-4
        )


def test_a_prompt_that_does_not_extend_a_stored_sequence_is_prefilled_whole(tiny):
    _, tok = tiny
    engine = engine_of(tiny)
    store = PrefixCache()
    p = tok("Compute 1+2")["input_ids"]
    gen = engine.generate([p], SamplingParams(max_new_tokens=4, greedy=True), prefixes=store)[0]
    assert store.match(p + gen.token_ids + [7])[0] == len(p) + len(gen.token_ids) - 1
    # the same prompt again (nothing new after the stored part but its last token) and an edited
    # one find no longer prefix than what they share
    assert store.match(p[:-1] + [p[-1] + 1] + gen.token_ids)[0] == 0
    assert store.match(p + gen.token_ids[:-1])[0] == 0  # a prompt must feed at least one token


def test_runner_episodes_are_the_same_with_and_without_reuse(tiny):
    model, tok = tiny
    chat = ChatFormat(tok)
    suite = ToolCalc(num_train=20, num_val=5, num_test=5, max_turns=4)
    tasks = suite.tasks("train")[:4]
    runs = {}
    for reuse in (True, False):
        runner = EpisodeRunner(engine_of(tiny, reuse_prefixes=reuse), chat, suite, 512)
        g = torch.Generator().manual_seed(0)
        runs[reuse] = (runner.run(tasks * 2, [0] * 8, runner.sampling(1.0, 1.0, False), g), runner)
    (on, runner_on), (off, runner_off) = runs[True], runs[False]
    assert max(len(t.turns) for t in on) > 1  # several turns: the reuse was exercised
    for a, b in zip(on, off):
        assert a.token_ids == b.token_ids and a.loss_mask == b.loss_mask
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    assert runner_on.metrics()["rollout/prefix_reused_frac"] > 0.3
    assert runner_off.metrics() == {}


def test_sequences_that_share_their_length_and_tail_are_told_apart():
    store = PrefixCache()
    tail = list(range(100, 100 + PrefixCache.TAIL))
    a, b = [1, 2, 3] + tail, [4, 5, 6] + tail
    store.keep(a, "kv of a")
    store.keep(b, "kv of b")
    store.turn()
    assert store.match(b + [9]) == (len(b), "kv of b")
    assert store.match(a + [9, 9]) == (len(a), "kv of a")
    assert store.match([7, 8, 9] + tail + [9]) == (0, None)
    # the next call's entries replace these
    store.turn()
    assert store.match(a + [9]) == (0, None)
