"""Bad input: one clear line on stderr, exit code 2, and nothing created or overwritten."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from agentrl.evaluation.cli import main
from agentrl.evaluation.episodes import build_suites, check_tokenizer
from agentrl.evaluation.sources import EvalError
from agentrl.models.factory import prepare_tokenizer
from agentrl.models.tokenizer import load_tiny_tokenizer
from tests.conftest import ROOT


def fails(cfg, capsys, *fragments: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_run_dir_without_checkpoints(fake_run, eval_cfg, capsys):
    run = fake_run(steps={"last": 2})
    (run / "checkpoints" / "last.ckpt").unlink()
    fails(eval_cfg(f"run_dir={run}"), capsys, "has no checkpoints", str(run))
    assert not (run / "eval").exists()


def test_missing_run_dir_and_not_a_run(eval_cfg, capsys, tmp_path):
    fails(eval_cfg(f"run_dir={tmp_path / 'nope'}"), capsys, "does not exist")
    fails(eval_cfg(f"run_dir={tmp_path}"), capsys, "no .hydra/config.yaml")


def test_checkpoint_of_another_model_leaves_earlier_outputs(fake_run, eval_cfg, capsys, tmp_path):
    run = fake_run(model_overrides=["model.hidden_size=64"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("earlier evaluation")
    fails(
        eval_cfg(f"run_dir={run}", f"output_dir={out}"),
        capsys,
        "does not fit the model of its run config",
        "checkpoint [",
    )
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "earlier evaluation"


def test_file_that_is_not_an_agentrl_checkpoint(fake_run, eval_cfg, capsys):
    run = fake_run(steps={"last": 2})
    torch.save({"state_dict": {}}, run / "checkpoints" / "other.ckpt")
    fails(eval_cfg(f"run_dir={run}"), capsys, "other.ckpt was not written by agentrl")
    (run / "checkpoints" / "other.ckpt").write_text("garbage")
    fails(eval_cfg(f"run_dir={run}"), capsys, "other.ckpt cannot be read")
    assert not (run / "eval").exists()


WORDS = ["<unk>", "<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "hello"]


def word_level_tokenizer():
    """A tokenizer that only knows a few whole words (no byte fallback): the rest is <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from agentrl.models.tokenizer import CHAT_TEMPLATE

    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        pad_token="<|pad|>",
        eos_token="<|end|>",
        additional_special_tokens=WORDS[3:6],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def small_model(vocab_size: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
    )
    return Qwen2ForCausalLM(config)


def test_unknown_tokens_are_refused(eval_cfg):
    suite = build_suites(eval_cfg().suites, "test", 3)[0]
    layout = {"max_seq_len": 512, "observation_role": "user"}
    with pytest.raises(EvalError, match=r"system prompt .* \(\d+ unknown tokens\)"):
        check_tokenizer("words", word_level_tokenizer(), small_model(len(WORDS)), suite, layout)
    # the tiny tokenizer (byte-level) covers it, but not a model with too few embeddings
    tiny = prepare_tokenizer(load_tiny_tokenizer())
    check_tokenizer("tiny", tiny, small_model(len(tiny)), suite, layout)
    with pytest.raises(EvalError, match="the model has only 100 embeddings"):
        check_tokenizer("tiny", tiny, small_model(100), suite, layout)
    with pytest.raises(EvalError, match="does not fit max_seq_len=20"):
        check_tokenizer("tiny", tiny, small_model(len(tiny)), suite, {**layout, "max_seq_len": 20})


def word_level_model_dir(path):
    """An HF folder with that tokenizer (transformers reloads it as a Qwen2 tokenizer that
    encodes the env's text to nothing: another way not to fit)."""
    small_model(len(WORDS)).save_pretrained(path)
    word_level_tokenizer().save_pretrained(path)
    return path


def test_env_text_the_tokenizer_cannot_encode(eval_cfg, capsys, tmp_path):
    model_dir = word_level_model_dir(tmp_path / "words")
    out = tmp_path / "out"
    fails(
        eval_cfg(f"model_dir={model_dir}", f"output_dir={out}"),
        capsys,
        "suite toolcalc does not fit the tokenizer of words",
        "it does not decode back",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "give exactly one of run_dir"),
        (["greedy=true", "episodes_per_task=4"], "greedy decoding gives the same episode"),
        (["greedy=false", "temperature=0"], "temperature must be > 0"),
        (["pass_k=[0]"], "pass_k must be a list of integers >= 1"),
        (["split=bogus"], "unknown split 'bogus'"),
        (["num_tasks=0"], "num_tasks must be >= 1"),
        (["suites.toolcalc.max_turns=0"], "suites.toolcalc: max_turns must be >= 1"),
    ],
)
def test_bad_settings(fake_run, eval_cfg, capsys, overrides, message):
    run = fake_run(steps={"last": 2}) if overrides else None
    source = [f"run_dir={run}"] if run else []
    fails(eval_cfg(*source, *overrides), capsys, message)
    if run:
        assert not (run / "eval").exists()


def test_both_inputs_and_output_dir_required(fake_run, eval_cfg, capsys):
    run = fake_run(steps={"last": 2})
    ckpt = run / "checkpoints" / "last.ckpt"
    fails(eval_cfg(f"run_dir={run}", f"checkpoints=[{ckpt}]"), capsys, "got run_dir, checkpoints")
    fails(eval_cfg(f"checkpoints=[{ckpt}]"), capsys, "output_dir=<folder> is required")


def test_command_line_exit_code(tmp_path):
    """`python evaluate.py` through Hydra: exit 2 and one line on stderr."""
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"run_dir={tmp_path / 'missing'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: run_dir {tmp_path / 'missing'} does not exist"
    )
