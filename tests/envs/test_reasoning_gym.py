"""Tests of the reasoning_gym adapter on three of the package's datasets."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agentrl.envs.reasoning_gym import ReasoningGym
from agentrl.envs.reasoning_gym.suite import task_expression
from agentrl.envs.toolcalls import answer_action, tool_call
from agentrl.utils.instantiate import ConfigError, instantiate
from tests.conftest import require_module

# a dependency of agentrl (pyproject.toml): missing, it skips here and fails in CI
reasoning_gym = require_module("reasoning_gym", "pip install -e .")

CONF = Path(__file__).resolve().parents[2] / "conf" / "env" / "reasoning_gym.yaml"
SMALL = {"num_train": 60, "num_val": 30, "num_test": 30}
ARITH = {
    "min_terms": 2,
    "max_terms": 3,
    "max_digits": 2,
    "operators": ["+", "-"],
    "allow_parentheses": False,
    "allow_negation": False,
}
DATASETS = [("basic_arithmetic", ARITH, True), ("chain_sum", {}, True), ("leg_counting", {}, True)]


def play(suite, task, actions):
    env = suite.make()
    env.reset(task)
    steps = []
    for a in actions:
        steps.append(env.step(a))
        if steps[-1][2]:
            break
    return env, steps


@pytest.mark.parametrize("name, config, uses_calc", DATASETS)
def test_oracle_solves_and_the_package_scores(name, config, uses_calc):
    suite = ReasoningGym(name, config, seed=0, **SMALL)
    ds = reasoning_gym.create_dataset(name, seed=1, size=1, **config)  # the package's scorer
    rng = random.Random(0)
    for task in suite.tasks("val"):
        actions = suite.oracle(task, rng)
        assert (actions[0].startswith("<tool_call>")) is uses_calc
        env, steps = play(suite, task, actions)
        assert suite.verify(task, env), env.render()
        assert steps[-1][1] == ds.score_answer(task.answer, task.meta["entry"]) == 1.0
        if uses_calc:  # the calculator's result is the answer
            assert f'"result":{task.answer}' in steps[0][0]
    wrong = play(suite, suite.tasks("val")[0], [answer_action("no idea")])[0]
    assert not suite.verify(suite.tasks("val")[0], wrong) and wrong.score == 0.0


@pytest.mark.parametrize("name, config, _", DATASETS)
def test_splits_deterministic_and_disjoint(name, config, _):
    a = ReasoningGym(name, config, seed=0, **SMALL)
    b = ReasoningGym(name, config, seed=0, **SMALL)
    questions = {s: [t.prompt for t in a.tasks(s)] for s in ("train", "val", "test")}
    assert questions == {s: [t.prompt for t in b.tasks(s)] for s in ("train", "val", "test")}
    everything = [q for qs in questions.values() for q in qs]
    assert len(everything) == len(set(everything)) == 120
    other = ReasoningGym(name, config, seed=1, **SMALL)
    assert [t.prompt for t in other.tasks("val")] != questions["val"]


def test_leg_counting_demonstration_spells_out_each_animals_legs():
    entry = {"metadata": {"animals": {"cat": 3, "spider": 2, "woodlouse": 1}}}
    assert task_expression("leg_counting", entry) == "3*4 + 2*8 + 1*14"
    assert task_expression("basic_arithmetic", {"metadata": {"expression": "1 + 2"}}) == "1 + 2"
    assert task_expression("spell_backward", {"metadata": {}}) is None


def test_partial_credit_is_the_step_reward_but_not_success():
    suite = ReasoningGym("leg_counting", {}, seed=0, **SMALL)
    task = suite.tasks("val")[0]
    env, steps = play(suite, task, [answer_action(f"{task.answer} legs")])
    assert 0.0 < steps[-1][1] < 1.0 and not suite.verify(task, env)


def test_guessing_demonstrator_and_calculator_off():
    suite = ReasoningGym("basic_arithmetic", ARITH, seed=0, guess_prob=1.0, **SMALL)
    rng = random.Random(0)
    for task in suite.tasks("val"):
        actions = suite.oracle(task, rng)
        assert len(actions) == 1 and not suite.verify(task, play(suite, task, actions)[0])
    plain = ReasoningGym("basic_arithmetic", ARITH, seed=0, calculator=False, **SMALL)
    task = plain.tasks("val")[0]
    assert plain.oracle(task, rng) == [answer_action(task.answer)]
    _, [(obs, _, _, info)] = play(plain, task, [tool_call("calc", expression="1+1")])
    assert "unknown tool 'calc'" in obs and info["invalid"]


@pytest.mark.parametrize(
    "action, message, invalid",
    [
        (
            '<tool_call>{"name":"calc","arguments":{"expression":"1+"}}</tool_call>',
            "cannot parse",
            False,
        ),
        (
            '<tool_call>{"name":"calc","arguments":{"expr":"1"}}</tool_call>',
            "missing argument",
            True,
        ),
        ('<tool_call>{"name":"search","arguments":{}}</tool_call>', "unknown tool", True),
        ("<tool_call>{not json}</tool_call>", "not valid JSON", True),
        ("the answer is 4", "expected <tool_call>", True),
    ],
)
def test_bad_actions_are_observations(action, message, invalid):
    suite = ReasoningGym("chain_sum", {}, seed=0, **SMALL)
    env, [(obs, reward, done, info)] = play(suite, suite.tasks("val")[0], [action])
    assert message in obs and info["invalid"] is invalid and not done and reward == 0.0


def test_turn_cap():
    suite = ReasoningGym("chain_sum", {}, seed=0, max_turns=2, **SMALL)
    env, steps = play(suite, suite.tasks("val")[0], ["x", "y", "z"])
    assert len(steps) == 2 and steps[-1][2] and steps[-1][3]["truncated"]


def test_config_file_instantiates_and_bad_values_are_one_line():
    cfg = OmegaConf.load(CONF)
    cfg.num_train, cfg.num_val, cfg.num_test = 20, 5, 5
    cfg.config = {"max_terms": 3, "operators": ["+"]}  # a Hydra ListConfig reaches the package
    suite = instantiate(cfg, "env")
    assert suite.name == "reasoning_gym/basic_arithmetic" and len(suite.tasks("test")) == 5
    for key, value, message in [
        ("dataset", "no_such_dataset", "not registered"),
        ("config", {"bogus": 1}, "unexpected keyword argument 'bogus'"),
        ("config", {"min_terms": 5, "max_terms": 2}, "max_terms must be >= min_terms"),
        ("guess_prob", 2.0, "guess_prob must be in"),
    ]:
        bad = cfg.copy()
        bad[key] = value
        with pytest.raises(ConfigError, match=message):
            instantiate(bad, "env")


def test_too_few_distinct_questions_is_a_clear_error():
    config = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"]}
    config |= {"allow_parentheses": False, "allow_negation": False}
    with pytest.raises(ValueError, match="distinct"):
        ReasoningGym("basic_arithmetic", config, num_train=500, num_val=10, num_test=10)
