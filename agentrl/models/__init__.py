"""Policy models and tokenizers: specs that ``conf/model/*.yaml`` instantiates, the tiny tokenizer."""

from agentrl.models.factory import (
    ModelLoadError,
    PretrainedModel,
    SmolLM2GGUF,
    TinyModel,
    TinyRandomFamily,
    apply_adapter,
    prepare_tokenizer,
    tiny_random_model,
)
from agentrl.models.tokenizer import load_tiny_tokenizer

__all__ = [
    "ModelLoadError",
    "PretrainedModel",
    "SmolLM2GGUF",
    "TinyModel",
    "TinyRandomFamily",
    "apply_adapter",
    "load_tiny_tokenizer",
    "prepare_tokenizer",
    "tiny_random_model",
]
