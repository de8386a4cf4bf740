"""VLLMEngine against the RolloutEngine contract and the trainer's own log-probs (tiny model).

Tolerance: vLLM (float32, its CPU kernels) and the trainer's transformers forward agree to
~1e-6 per token here; the tests allow 1e-4. A stale engine (weights not pushed, or the prefix
cache not reset after a push) is off by > 1e-2 with the perturbation used below.
"""

from __future__ import annotations

import pytest
import torch

from agentrl.rollout.engine import HFEngine, SamplingParams
from tests.vllm.conftest import max_diff, perturb, tiny_policy, trainer_logprobs

TOL = 1e-4
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [20, 21, 22, 23], [40, 41]]
# long enough to fill whole KV blocks, which is what vLLM's prefix cache keeps
LONG_PROMPTS = [[5 + (7 * i + j) % 490 for i in range(300)] for j in range(3)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from agentrl.rollout.vllm_engine import VLLMEngine

    model, tok = tiny_policy()
    engine = VLLMEngine(cache_dir=str(tmp_path_factory.mktemp("vllm")), max_model_len=512)
    engine.bind(model, tok)
    hf = HFEngine()
    hf.bind(model, tok)
    yield model, tok, engine, hf
    engine.close()


def test_greedy_matches_hf_engine_tokens_and_logprobs(setup):
    model, tok, engine, hf = setup
    params = SamplingParams(max_new_tokens=12, greedy=True, stop_token_ids=[tok.eos_token_id])
    ours, theirs = engine.generate(PROMPTS, params), hf.generate(PROMPTS, params)
    for p, a, b in zip(PROMPTS, ours, theirs):
        assert a.token_ids == b.token_ids
        assert a.finish == b.finish
        assert len(a.logprobs) == len(a.token_ids) <= 12
        assert max_diff(a.logprobs, trainer_logprobs(model, p, a.token_ids)) < TOL


def test_stop_token_and_stop_string_end_the_turn_like_hf(setup):
    model, tok, engine, hf = setup
    # a prompt whose greedy continuation has a printable token after the first (vLLM's
    # detokenizer holds back incomplete UTF-8, so a stop string of U+FFFD would never match)
    candidates = [[i, i + 1, i + 2] for i in range(5, 400, 7)]
    frees = engine.generate(candidates, SamplingParams(max_new_tokens=8, greedy=True))
    prompt, free, k = next(
        (p, g, k)
        for p, g in zip(candidates, frees)
        for k in range(1, 8)
        if tok.decode([g.token_ids[k]]).strip().isalnum()
    )
    assert free.finish == "length" and len(free.token_ids) == 8
    stop = free.token_ids[k]
    by_id = SamplingParams(max_new_tokens=8, greedy=True, stop_token_ids=[stop])
    got = engine.generate([prompt], by_id)[0]
    assert got.token_ids == free.token_ids[: free.token_ids.index(stop) + 1]
    assert got.finish == "stop" and got.token_ids[-1] == stop
    text = tok.decode([stop]).strip()
    by_text = SamplingParams(max_new_tokens=8, greedy=True, stop_strings=[text])
    got, want = engine.generate([prompt], by_text)[0], hf.generate([prompt], by_text)[0]
    assert got.finish == "stop" and text in tok.decode(got.token_ids)
    assert len(got.token_ids) <= k + 1
    assert got.token_ids == want.token_ids  # the tokens stay in, as HFEngine keeps them


def test_sampling_is_seeded_by_the_generator_and_logprobs_are_tempered(setup):
    model, tok, engine, _ = setup
    params = SamplingParams(max_new_tokens=10, temperature=0.7)
    runs = [
        engine.generate(PROMPTS * 2, params, torch.Generator().manual_seed(s)) for s in (1, 1, 2)
    ]
    assert [g.token_ids for g in runs[0]] == [g.token_ids for g in runs[1]]
    assert [g.token_ids for g in runs[0]] != [g.token_ids for g in runs[2]]
    for p, g in zip(PROMPTS * 2, runs[0]):
        assert max_diff(g.logprobs, trainer_logprobs(model, p, g.token_ids, 0.7)) < TOL


def test_no_room_left_is_an_empty_length_generation(setup):
    _, _, engine, _ = setup
    out = engine.generate([[5] * 512, [5, 6]], SamplingParams(max_new_tokens=4, greedy=True))
    assert out[0].token_ids == [] and out[0].finish == "length"
    assert len(out[1].token_ids) == 4


def test_after_a_weight_push_engine_logprobs_match_the_trainer(setup):
    model, tok, engine, hf = setup
    params = SamplingParams(max_new_tokens=10, greedy=True)
    engine.generate(LONG_PROMPTS, params)  # the prompts' KV now sits in the prefix cache
    perturb(model, 0.05)
    stale = engine.generate(LONG_PROMPTS, params)
    assert (
        max(
            max_diff(g.logprobs, trainer_logprobs(model, p, g.token_ids))
            for p, g in zip(LONG_PROMPTS, stale)
        )
        > 1e-2
    ), "the perturbation must be visible, or this test could not fail"
    engine.sync(model)
    assert engine.last_sync_s > 0  # timed (perf/sync_s); how fast is a benchmark's, not a test's
    # without the prefix-cache reset the cached KV of the old weights would be reused here
    fresh, want = engine.generate(LONG_PROMPTS, params), hf.generate(LONG_PROMPTS, params)
    for p, g, w in zip(LONG_PROMPTS, fresh, want):
        assert g.token_ids == w.token_ids
        assert max_diff(g.logprobs, trainer_logprobs(model, p, g.token_ids)) < TOL


def test_a_step_larger_than_the_token_budget_samples_seeded(setup):
    """128 toolcalc prompts (~6,400 prompt tokens) in one call: with chunked prefill, vLLM's CPU
    sampler crashed on a seeded request whose prefill was split ("CPU Generator does not use
    offset"); the engine disables it."""
    from agentrl.envs.toolcalc import ToolCalc
    from agentrl.rollout.chat import ChatFormat

    model, tok, engine, _ = setup
    suite = ToolCalc(
        num_train=64, num_val=10, num_test=10, max_ops=3, left_to_right=False, guess_prob=0.0
    )
    chat = ChatFormat(tok)
    prompts = [chat.prompt_ids(suite.system_prompt, t.prompt) for t in suite.tasks("train")] * 2
    assert sum(map(len, prompts)) > 4096
    params = SamplingParams(max_new_tokens=4, temperature=1.0)
    out = engine.generate(prompts, params, torch.Generator().manual_seed(0))
    assert all(len(g.token_ids) == 4 for g in out)
    for p, g in list(zip(prompts, out))[::16]:
        assert max_diff(g.logprobs, trainer_logprobs(model, p, g.token_ids)) < TOL
