"""LoRA: the adapter (lora_sync=adapter) or merged weights (lora_sync=merged) pushed into vLLM."""

from __future__ import annotations

import pytest
import torch

from agentrl.rollout.vllm_engine import hf_state_dict
from tests.vllm.conftest import max_diff, perturb, tiny_policy, trainer_logprobs

PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12]]


@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_lora_push_matches_the_trainer(tmp_path, mode):
    from agentrl.rollout.engine import SamplingParams
    from agentrl.rollout.vllm_engine import VLLMEngine

    model, tok = tiny_policy(adapter=True)
    engine = VLLMEngine(cache_dir=str(tmp_path), max_model_len=256, lora_sync=mode)
    engine.bind(model, tok)
    try:
        assert (engine.lora_request is not None) == (mode == "adapter")
        base = {k: v.clone() for k, v in hf_state_dict(model, merge_lora=False).items()}
        perturb(model, 0.3, only_lora=True)
        engine.sync(model)
        # the base weights are untouched by a push
        for k, v in hf_state_dict(model, merge_lora=False).items():
            assert torch.equal(v, base[k]), k
        params = SamplingParams(max_new_tokens=10, temperature=1.0)
        for p, g in zip(
            PROMPTS, engine.generate(PROMPTS, params, torch.Generator().manual_seed(0))
        ):
            assert max_diff(g.logprobs, trainer_logprobs(model, p, g.token_ids)) < 1e-4
    finally:
        engine.close()
