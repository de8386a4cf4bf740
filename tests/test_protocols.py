"""Every reward, algorithm, runner and engine the config can select declares its protocol
(agentrl/protocols.py) and has every member the protocol lists; rewards from outside the package
are adapted to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf
from typing_extensions import get_protocol_members

from agentrl.envs.external.suite import ExternalRunner
from agentrl.envs.toolcalc import ToolCalc
from agentrl.models.tokenizer import load_tiny_tokenizer
from agentrl.protocols import Engine, PreferenceAlgorithm, Reward, RLAlgorithm, Runner
from agentrl.rewards.base import as_reward, score_batch
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.runner import EpisodeRunner
from agentrl.utils.instantiate import instantiate
from tests.test_callbacks import traj

CONF = Path(__file__).resolve().parents[1] / "conf"
# rewards whose construction needs a service or a model download: checked as classes
NOT_BUILT = ("api", "judge")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def missing(obj, protocol) -> list[str]:
    return sorted(m for m in get_protocol_members(protocol) if not hasattr(obj, m))


def declares(cls, protocol) -> None:
    assert protocol in cls.__mro__, f"{cls.__name__} does not subclass {protocol.__name__}"


@pytest.mark.parametrize("name", options("algorithm"))
def test_every_algorithm_satisfies_its_protocol(make_cfg, name):
    algo = instantiate(make_cfg(f"algorithm={name}").algorithm, "algorithm")
    protocol = RLAlgorithm if algo.step == "rl" else PreferenceAlgorithm
    declares(type(algo), protocol)
    assert isinstance(algo, protocol) and not missing(algo, protocol)
    assert algo.needs_values is (name == "ppo")


@pytest.mark.parametrize("name", options("reward"))
def test_every_reward_satisfies_its_protocol(make_cfg, name):
    node = make_cfg(f"reward={name}").reward
    cls = get_class(node._target_)
    declares(cls, Reward)
    if name in NOT_BUILT:
        assert missing(cls, Reward) == []
        return
    reward = instantiate(node, "reward")
    assert isinstance(reward, Reward) and not missing(reward, Reward)
    assert as_reward(reward) is reward  # a declared reward is used as it is


@pytest.mark.parametrize("name", options("rollout"))
def test_every_engine_satisfies_its_protocol(name):
    cls = get_class(OmegaConf.load(CONF / "rollout" / f"{name}.yaml").engine._target_)
    declares(cls, Engine)
    assert missing(cls, Engine) == []
    assert cls.streams_tokens is (name == "hf")  # only the HF engine calls on_token


def test_both_runners_satisfy_the_protocol_and_sample_alike():
    chat = ChatFormat(load_tiny_tokenizer())
    suite = ToolCalc(num_train=4, num_val=2, num_test=2)
    runners = [EpisodeRunner(None, chat, suite, 512), ExternalRunner(suite, None, chat, 512)]
    for runner in runners:
        declares(type(runner), Runner)
        assert isinstance(runner, Runner) and not missing(runner, Runner)
    a, b = (r.sampling(0.7, 0.9, greedy=False) for r in runners)
    assert a == b and a.stop_strings == suite.stop_strings and a.temperature == 0.7
    assert runners[0].metrics() == {} and runners[1].namespace == "gateway"


class Foreign:
    """A reward written outside the package: the protocol's shape without subclassing it."""

    name = "foreign"

    def __init__(self):
        self.state = {"n": 0}

    def __call__(self, task, trajectory):
        self.state["n"] += 1
        return 0.25

    def state_dict(self):
        return dict(self.state)


def plain(task, trajectory):
    return 0.5


def test_foreign_rewards_are_adapted_with_the_protocol_defaults():
    fn = as_reward(plain)
    assert isinstance(fn, Reward) and fn.name == "plain" and fn.metrics() == {}
    assert fn.state_dict() == {} and fn.load_state_dict({"x": 1}) is None
    obj = Foreign()
    wrapped = as_reward(obj)
    t = traj(0)
    score_batch(wrapped, [t])
    assert t.reward == 0.25 and t.reward_components == {"foreign": 0.25}
    assert wrapped.state_dict() == {"n": 1} and wrapped.metrics() == {}
    with pytest.raises(ValueError, match="a reward must be callable"):
        as_reward(42)
