"""The vllm tier (`make test-vllm`): runs in .venv-vllm, skipped where vllm is not importable."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from agentrl.rollout.vllm_engine import vllm_available
from agentrl.utils.instantiate import instantiate
from tests.conftest import CONF

SKIP_REASON = "vllm is not installed here: `make test-vllm` runs this tier in .venv-vllm"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/vllm/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.vllm)
            if not vllm_available():
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def tiny_policy(adapter: bool = False):
    """The default tiny model (random init, seed 0) and its tokenizer, in eval mode."""
    model, tok = instantiate(OmegaConf.load(CONF / "model" / "tiny.yaml")).load()
    if adapter:
        from agentrl.models.factory import apply_adapter

        model = apply_adapter(model, OmegaConf.load(CONF / "adapter" / "lora.yaml"))
    return model.eval(), tok


def trainer_logprobs(model, prompt: list[int], ids: list[int], temperature: float = 1.0):
    """log p(ids | prompt) under the trainer's model, tempered: one per generated token."""
    seq = torch.tensor([prompt + ids])
    with torch.no_grad():
        logits = model(input_ids=seq).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1).tolist()


def perturb(model, scale: float, only_lora: bool = False, seed: int = 0) -> None:
    """Add seeded noise to the weights (an 'update' the engine has not seen)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only_lora and "lora_" not in name:
                continue
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))
