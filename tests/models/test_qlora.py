"""adapter=qlora: a clear one-line error without a GPU; on a GPU, a smoke run of the 4-bit base."""

import importlib.util

import pytest
import torch

from agentrl.models import qlora
from agentrl.train import main, run

needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")


@needs_cpu_only
def test_qlora_on_cpu_is_one_line_and_exit_2(make_cfg, capsys):
    cfg = make_cfg("adapter=qlora", "debug=smoke")
    with pytest.raises(SystemExit) as info:
        main(cfg)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error: adapter=qlora needs a CUDA GPU")


def test_check_passes_other_adapters_and_names_missing_pieces(make_cfg, monkeypatch):
    assert qlora.check(make_cfg("adapter=lora").adapter) is None
    assert qlora.check(make_cfg("adapter=none").adapter) is None
    cfg = make_cfg("adapter=qlora")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    assert "pip install 'agentrl[qlora]'" in qlora.check(cfg.adapter)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object())
    assert qlora.check(cfg.adapter) is None
    cfg.adapter.quantization.compute_dtype = "int8"
    assert "compute_dtype" in qlora.check(cfg.adapter)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_qlora_smoke_run_trains_only_the_adapter(make_cfg, tmp_path):
    cfg = make_cfg("adapter=qlora", "debug=smoke", "adapter.config.r=4")
    run(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert any("lora_A" in k for k in state["state_dict"])
