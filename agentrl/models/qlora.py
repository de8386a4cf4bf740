"""QLoRA (``adapter=qlora``): the base model's linear layers in 4 bits (bitsandbytes), LoRA on top.

The run loads and warm-starts the model in full precision as usual; ``quantize`` then saves it
with ``save_pretrained`` and reloads it with a ``transformers.BitsAndBytesConfig`` onto the GPU,
the way transformers documents 4-bit loading, and ``peft.prepare_model_for_kbit_training`` readies
it for the adapter. The reference policy is the quantized base with the adapter disabled.
bitsandbytes' 4-bit kernels need CUDA: ``check`` refuses a machine without a GPU before any compute.
"""

from __future__ import annotations

import importlib.util
import tempfile

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def check(adapter_cfg) -> str | None:
    """The one-line reason a QLoRA adapter config cannot run here, or None (also for adapters
    without ``quantization``)."""
    quant = None if adapter_cfg is None else adapter_cfg.get("quantization")
    if not adapter_cfg or not adapter_cfg.get("enabled", False) or not quant:
        return None
    if not torch.cuda.is_available():
        return (
            "adapter=qlora needs a CUDA GPU (bitsandbytes' 4-bit base has no CPU kernels) and "
            "this machine has none; use adapter=lora on the CPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        return "adapter=qlora needs bitsandbytes: pip install 'agentrl[qlora]'"
    dtype = quant.get("compute_dtype", "bfloat16")
    if dtype not in _DTYPES:
        return f"adapter.quantization.compute_dtype must be one of {sorted(_DTYPES)}, got {dtype!r}"
    return None


def quantize(model, quant_cfg):
    """``model`` (a transformers causal LM) reloaded with its linear layers in 4 bits on the
    current CUDA device, prepared for k-bit training (peft)."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_cfg.get("quant_type", "nf4"),
        bnb_4bit_use_double_quant=bool(quant_cfg.get("double_quant", True)),
        bnb_4bit_compute_dtype=_DTYPES[quant_cfg.get("compute_dtype", "bfloat16")],
    )
    with tempfile.TemporaryDirectory(prefix="agentrl-qlora-") as tmp:
        model.save_pretrained(tmp)
        quantized = AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=config, device_map={"": torch.cuda.current_device()}
        )
    return prepare_model_for_kbit_training(
        quantized, use_gradient_checkpointing=bool(quant_cfg.get("gradient_checkpointing", False))
    )
