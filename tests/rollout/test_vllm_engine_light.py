"""Parts of rollout=vllm that need no vLLM: the weights it is given, and the missing-vLLM error."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from agentrl.models.factory import apply_adapter
from agentrl.rollout.vllm_engine import hf_state_dict, vllm_available
from agentrl.utils.instantiate import instantiate
from tests.conftest import CONF, ROOT


def _tiny():
    return instantiate(OmegaConf.load(CONF / "model" / "tiny.yaml")).load()


def test_plain_model_weights_are_its_state_dict():
    model, _ = _tiny()
    weights = hf_state_dict(model, merge_lora=True)
    assert weights.keys() == model.state_dict().keys()


def test_lora_weights_use_hf_names_and_merge_like_peft():
    model, _ = _tiny()
    names = set(model.state_dict())
    peft_model = apply_adapter(model, OmegaConf.load(CONF / "adapter" / "lora.yaml"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    base = hf_state_dict(peft_model, merge_lora=False)
    merged = hf_state_dict(peft_model, merge_lora=True)
    assert set(base) == set(merged) == names
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[q], merged[q])
    # peft's own merge of a copy gives the same weights
    reference = peft_model.merge_and_unload().state_dict()
    for k in names:
        torch.testing.assert_close(merged[k], reference[k], rtol=0, atol=1e-6)


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_launch_without_vllm_is_one_line_naming_the_install(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch.py", "rollout=vllm", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "make setup-vllm" in errors[0] and ".[vllm]" in errors[0]
    assert "Traceback" not in proc.stderr
