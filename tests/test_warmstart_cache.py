"""The warm-start cache: by config, and by what training saw (a config change the demonstrations
do not see reuses the weights instead of training again)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from omegaconf import OmegaConf

from agentrl.batching import collate
from agentrl.models.factory import TinyModel
from agentrl.warmstart import WarmStart, warmstart_identity
from tests.conftest import CONF

MODEL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1}
TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,
}


TRAIN = WarmStart._train


@dataclass
class Demo:
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float] = field(default_factory=list)
    success: bool = True

    def __post_init__(self):
        self.logprobs = [0.0] * len(self.token_ids)


def demos(shift: int) -> list[Demo]:
    return [Demo([5 + i, 9, 20 + (i + shift) % 7, 2], [0, 0, 1, 1]) for i in range(12)]


def warm(tmp_path, monkeypatch, env: dict, shift: int, trained: list):
    ws = WarmStart(steps=3, batch_size=4, num_demos=12, cache_dir=str(tmp_path / "ws"))
    monkeypatch.setattr(WarmStart, "demonstrations", lambda self, runner, suite: demos(shift))

    def counting(self, *args):
        trained.append(env)
        return TRAIN(self, *args)

    monkeypatch.setattr(WarmStart, "_train", counting)
    model, tok = TinyModel(**MODEL).load()
    identity = {"model": MODEL, "env": env, "role": "user"}
    folder = ws.run(model, tok, None, None, identity, TRAINER)
    return folder, model


def test_same_demonstrations_under_another_config_reuse_the_weights(tmp_path, monkeypatch):
    trained: list = []
    # a half-written entry with the same content (another process's, or left by a crash) is no twin
    ws = WarmStart(steps=3, batch_size=4, num_demos=12)
    tmp = tmp_path / "ws" / ".tmp-left"
    tmp.mkdir(parents=True)
    (tmp / "content.key").write_text(ws.content_key({"model": MODEL}, collate(demos(0), 0)) + "\n")
    torch.save({}, tmp / "model.pt")
    a, model_a = warm(tmp_path, monkeypatch, {"timeout": 1}, 0, trained)
    # the env config differs (a new key at its default, say), the demonstrations do not
    b, model_b = warm(tmp_path, monkeypatch, {"timeout": 1, "new_option": 0}, 0, trained)
    assert trained == [{"timeout": 1}], "the second run trained again"
    assert a != b and (b / "model.pt").is_file()
    assert (a / "content.key").read_text() == (b / "content.key").read_text()
    for k, v in model_a.state_dict().items():
        assert torch.equal(v, model_b.state_dict()[k]), k
    # the weights really were trained (not the fresh initialisation)
    fresh = TinyModel(**MODEL).load()[0].state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in model_b.state_dict().items())
    # other demonstrations under a third config: trained, a cache entry of their own
    c, _ = warm(tmp_path, monkeypatch, {"timeout": 2}, 3, trained)
    assert trained[-1] == {"timeout": 2} and len(trained) == 2
    assert (c / "content.key").read_text() != (a / "content.key").read_text()
    # and the config key still short-cuts everything: no demonstrations needed
    monkeypatch.setattr(
        WarmStart, "demonstrations", lambda *a: (_ for _ in ()).throw(AssertionError)
    )
    ws = WarmStart(steps=3, batch_size=4, num_demos=12, cache_dir=str(tmp_path / "ws"))
    model, tok = TinyModel(**MODEL).load()
    identity = {"model": MODEL, "env": {"timeout": 1, "new_option": 0}, "role": "user"}
    assert ws.run(model, tok, None, None, identity, TRAINER) == b


def test_content_key_covers_the_model_and_the_settings():
    _, tok = TinyModel(**MODEL).load()
    batch = collate(demos(0), tok.pad_token_id)
    ws = WarmStart(steps=3, batch_size=4, num_demos=12)
    key = ws.content_key({"model": MODEL, "env": {"a": 1}}, batch)
    assert ws.content_key({"model": MODEL, "env": {"a": 2}}, batch) == key
    assert ws.content_key({"model": {**MODEL, "seed": 1}}, batch) != key
    assert (
        WarmStart(steps=4, batch_size=4, num_demos=12).content_key({"model": MODEL}, batch) != key
    )
    assert ws.content_key({"model": MODEL}, collate(demos(1), tok.pad_token_id)) != key


def test_demonstrated_actions_longer_than_a_turn_are_warned_about(caplog):
    """An action the policy could not finish within env.max_action_tokens is named in a warning
    (imitation would teach what rollouts cut off); webnav's size queries fit its default."""
    import logging
    import random
    from types import SimpleNamespace

    from agentrl.envs.webnav.suite import WebNav
    from agentrl.models.tokenizer import load_tiny_tokenizer
    from agentrl.rollout.chat import ChatFormat
    from agentrl.warmstart import warn_long_actions

    chat = SimpleNamespace(action_ids=lambda a: list(a) + [0])  # one token a character + end
    with caplog.at_level(logging.WARNING, logger="agentrl.warmstart"):
        assert warn_long_actions(chat, SimpleNamespace(max_action_tokens=4), ["abc", "abcd"]) == 1
    assert "1 of 2 demonstrated actions are longer than env.max_action_tokens=4" in caplog.text
    assert "'abcd'" in caplog.text
    caplog.clear()
    assert warn_long_actions(chat, SimpleNamespace(max_action_tokens=5), ["abc", "abcd"]) == 0
    assert not caplog.text

    # the warm start checks its demonstrations
    ws = WarmStart(steps=1, batch_size=1, num_demos=2, cache_dir="unused")
    suite = SimpleNamespace(
        max_action_tokens=3, tasks=lambda split: ["t1", "t2"], oracle=lambda t, rng: ["abcdef"]
    )
    runner = SimpleNamespace(chat=chat, demonstration=lambda t, actions: (t, actions))
    with caplog.at_level(logging.WARNING, logger="agentrl.warmstart"):
        assert ws.demonstrations(runner, suite) == [("t1", ["abcdef"]), ("t2", ["abcdef"])]
    assert "2 of 2 demonstrated actions" in caplog.text
    caplog.clear()

    chat = ChatFormat(load_tiny_tokenizer())
    kw = {"buy_prob": 0.0, "num_train": 60, "num_val": 5, "num_test": 5}
    with WebNav(seed=0, size_query_prob=1.0, **kw) as suite:
        rng = random.Random(0)
        actions = [a for t in suite.tasks("train") for a in suite.oracle(t, rng)]
        assert any("size" in a for a in actions)
        assert warn_long_actions(chat, suite, actions) == 0  # the default, 32, fits them
        suite.max_action_tokens = 24  # the old setting cut them off
        assert warn_long_actions(chat, suite, actions) > 0


def _yaml_settings() -> dict:
    """conf/train.yaml's warm-start settings (its interpolations given plain values)."""
    node = OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml").warmstart, resolve=False)
    del node["_target_"]
    return {**node, "cache_dir": "unused", "seed": 0}


def _other(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    return "bf16-mixed" if value in (None, "32-true") else None


def test_every_setting_that_shapes_the_weights_is_in_the_key(make_cfg):
    """Changing any warm-start setting but ``enabled``/``cache_dir`` gives another cache entry
    (a stale one is never reused); null and 32-true precision train alike and share one."""
    settings = _yaml_settings()
    identity = {"model": MODEL, "env": {"a": 1}, "role": "user", "max_seq_len": 512}
    key = WarmStart(**settings).key(identity)
    params = [p for p in inspect.signature(WarmStart).parameters if p in settings]
    assert set(params) == set(settings), "the YAML and the constructor name other settings"
    for name in params:
        other = WarmStart(**{**settings, name: _other(settings[name])}).key(identity)
        if name in WarmStart.NOT_IN_KEY:
            assert other == key, name
        else:
            assert other != key, f"warmstart.{name} is left out of the cache key"
    for precision in (None, "32-true"):
        assert WarmStart(**{**settings, "precision": precision}).key(identity) == key
    # the run's settings outside warmstart that shape the demonstrations
    cfg = make_cfg()
    base = warmstart_identity(cfg)
    for override in ("rollout.max_seq_len=300", "rollout.observation_role=tool", "env.seed=5"):
        assert warmstart_identity(make_cfg(override)) != base, override
    assert warmstart_identity(make_cfg("warmstart.cache_dir=/x", "trainer.max_epochs=3")) == base
