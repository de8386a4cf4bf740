"""The one metrics channel (agentrl/metrics_channel.py): every source namespaced, read once, each
key counted once; the RL step and the preference (DPO) step both log it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from agentrl.algorithms.dpo import DPO
from agentrl.envs.toolcalc import ToolCalc
from agentrl.envs.toolcalc.suite import ToolCalcEnv
from agentrl.metrics_channel import component_metrics
from agentrl.models.tokenizer import load_tiny_tokenizer
from agentrl.preference import preference_step
from agentrl.protocols import Reward, Runner
from agentrl.rewards.base import score_batch
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.runner import EpisodeRunner
from agentrl.step_metrics import train_metrics
from agentrl.types import Task, Trajectory, Turn


class CountingEnv(ToolCalcEnv):
    """ToolCalc's episode env, reporting one ``calls`` counter per step in info["metrics"]."""

    def step(self, action):
        obs, reward, done, info = super().step(action)
        info["metrics"] = {"calls": 1.0}
        return obs, reward, done, info


class CountingToolCalc(ToolCalc):
    """ToolCalc with env metrics of both kinds: per-step counters and the suite's own."""

    def make(self):
        return CountingEnv(self.system_prompt, self.max_turns)

    def metrics(self, trajectories):
        return {"env/episodes_seen": float(len(trajectories)), "faults": 0.0}


class ReadOnce(Reward):
    """A reward whose metrics say how often they were read."""

    name = "read_once"

    def __init__(self):
        self.reads = 0

    def __call__(self, task, trajectory):
        return 1.0

    def metrics(self):
        self.reads += 1
        return {"reward/reads": float(self.reads), "latency_s": 0.5}


class GatewayLike(Runner):
    namespace = "gateway"

    def __init__(self):
        self.suite = self.chat = None

    def run(self, tasks, groups, params, generator=None):
        return []

    def metrics(self):
        return {"gateway/crashes": 1.0, "timeouts": 2.0}


def episode(turn_metrics: list[dict]) -> Trajectory:
    turns = [Turn("a", "o", 0.0, (0, 1), {"metrics": m}) for m in turn_metrics]
    return Trajectory(
        task=Task("t", "p", 1),
        token_ids=[1],
        loss_mask=[0],
        logprobs=[0.0],
        prompt_len=1,
        turns=turns,
        success=True,
    )


def test_every_source_is_namespaced_read_once_and_counted_once(caplog):
    caplog.set_level(logging.WARNING)
    trajs = [episode([{"calls": 1.0}, {"calls": 2.0}]), episode([{"calls": 1.0}])]
    reward = ReadOnce()
    suite = SimpleNamespace(metrics=lambda t: {"env/episodes_seen": 2.0, "env/calls": 99.0})
    module = SimpleNamespace(suite=suite, reward=reward, runner=GatewayLike())
    m = component_metrics(module, trajs, rewarded=True)
    assert m == {
        "env/calls": 4.0,  # the step sum of the turns' counters; the suite's clash is dropped
        "env/episodes_seen": 2.0,
        "reward/reads": 1.0,
        "reward/latency_s": 0.5,
        "gateway/crashes": 1.0,
        "gateway/timeouts": 2.0,
    }
    assert reward.reads == 1 and "env/calls reported twice" in caplog.text
    # a step that did not score with the reward logs none of its metrics
    assert not [k for k in component_metrics(module, trajs, rewarded=False) if "reward" in k]


def test_a_source_that_raises_is_skipped_not_fatal(caplog):
    def boom(trajs):
        raise RuntimeError("service gone")

    module = SimpleNamespace(
        suite=SimpleNamespace(metrics=boom), reward=ReadOnce(), runner=GatewayLike()
    )
    m = component_metrics(module, [], rewarded=True)
    assert "reward/reads" in m and "gateway/crashes" in m and "service gone" in caplog.text


def test_the_rl_row_reads_the_reward_metrics_once_after_scoring():
    reward = ReadOnce()
    trajs = [episode([{"calls": 1.0}])]
    counts = score_batch(reward, trajs)
    assert reward.reads == 0  # scoring leaves the reading to the collector
    host = SimpleNamespace(
        counters={"failed_episodes": 0, "skipped_updates": 0},
        rl_step=1,
        suite=None,
        reward=reward,
        runner=GatewayLike(),
    )
    m = train_metrics(host, trajs, counts, {})
    assert m["reward/reads"] == 1.0 and m["env/calls"] == 1.0 and m["gateway/timeouts"] == 2.0


def test_dpo_logs_the_env_metrics():
    chat = ChatFormat(load_tiny_tokenizer())
    suite = CountingToolCalc(num_train=20, num_val=5, num_test=5, guess_prob=0.0)
    logged = []
    module = SimpleNamespace(
        algorithm=DPO(pairs="env"),
        suite=suite,
        runner=EpisodeRunner(None, chat, suite, max_seq_len=512),
        reward=ReadOnce(),
        tokenizer=chat.tokenizer,
        engine=SimpleNamespace(sync=lambda policy: None),
        policy=None,
        updater=SimpleNamespace(micro_batch_size=2, step=lambda *a: {"loss/policy": 0.0}),
        reference_logprobs=lambda batch: None,
        optimizers=lambda: None,
        generator=lambda step, salt: torch.Generator().manual_seed(0),
        counters={"failed_episodes": 0, "skipped_updates": 0},
        device="cpu",
        seed=0,
        global_rank=0,
        rl_step=0,
        _trainer=None,
        log_train=logged.append,
    )
    preference_step(module, {"step": 0, "tasks": suite.tasks("train")[:3]})
    (row,) = logged
    episodes = [t for t in module.last_samples]
    assert row["pref/pairs"] >= 1 and len(episodes) == 2 * row["pref/pairs"]
    assert row["env/calls"] == sum(len(t.turns) for t in episodes) > 0
    assert row["env/episodes_seen"] == len(episodes) and row["env/faults"] == 0.0
    # env pairs are not scored by the reward: none of its statistics are logged
    assert module.reward.reads == 0 and "reward/reads" not in row
