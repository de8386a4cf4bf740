"""Tests of the toolcalc env: action parsing, the turn cap, splits, oracle, verifier, config."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from agentrl.envs.toolcalc.suite import ERR_DONE, ToolCalc, ToolCalcEnv, answer_action, parse_action
from agentrl.types import Task

CONF = Path(__file__).resolve().parents[2] / "conf" / "env" / "toolcalc.yaml"
SMALL = {"num_train": 300, "num_val": 50, "num_test": 50}


@pytest.fixture(scope="module")
def suite() -> ToolCalc:
    # a demonstrator that never guesses (the oracle tests count on it)
    return ToolCalc(seed=0, guess_prob=0.0, **SMALL)


@pytest.fixture
def env(suite: ToolCalc) -> ToolCalcEnv:
    env = suite.make()
    env.reset(Task(id="t", prompt="Compute (12+7)*3-5", answer=52))
    return env


def run_episode(suite: ToolCalc, task: Task, actions: list[str]) -> ToolCalcEnv:
    env = suite.make()
    assert env.reset(task) == task.prompt
    for action in actions:
        _, _, done, _ = env.step(action)
        if done:
            break
    return env


@pytest.mark.parametrize(
    "action, tool, args",
    [
        ("<calc>12+7</calc>", "calc", (12, "+", 7)),
        ("  <calc> 12 *  7 </calc>\n", "calc", (12, "*", 7)),
        ("<calc>\t5-9</calc>", "calc", (5, "-", 9)),
        ("<calc>5--3</calc>", "calc", (5, "-", -3)),
        ("<calc>999999*999999</calc>", "calc", (999999, "*", 999999)),
        ("<answer>52</answer>", "answer", (52,)),
        ("\n<answer>  -4 </answer>  ", "answer", (-4,)),
    ],
)
def test_parse_good(action: str, tool: str, args: tuple) -> None:
    parsed = parse_action(action)
    assert parsed.error is None
    assert (parsed.tool, parsed.args) == (tool, args)


MALFORMED = [
    "",
    "19",
    "12+7",
    "calc 12+7",
    "<calc>12+7",
    "<calc>12+7</answer>",
    "<CALC>12+7</CALC>",
    "I think <calc>12+7</calc>",
    "<calc>12+7</calc> done",
    "<calc>1+2</calc><calc>3+4</calc>",
    "<calc>1+2</calc><answer>3</answer>",
    "<calc></calc>",
    "<calc>12</calc>",
    "<calc>1+2+3</calc>",
    "<calc>12/3</calc>",
    "<calc>1.5+2</calc>",
    "<calc>a+b</calc>",
    "<calc>1234567+1</calc>",
    "<calc>(1+2)</calc>",
    "<calc>12 7</calc>",
    "<answer></answer>",
    "<answer>fifty</answer>",
    "<answer>5.0</answer>",
    "<answer>1 2</answer>",
    "<answer>1+2</answer>",
    "<answer>1234567</answer>",
    "<answer>\u0665</answer>",
]


@pytest.mark.parametrize("action", MALFORMED)
def test_malformed_action_is_an_error_observation(env: ToolCalcEnv, action: str) -> None:
    obs, reward, done, info = env.step(action)
    assert obs.startswith("error:")
    assert reward == 0.0 and not done
    assert info["invalid"] is True and info["tool"] is None and info["error"] == obs
    assert info["truncated"] is False and info["answer"] is None
    obs, _, _, info = env.step("<calc>12+7</calc>")
    assert obs == "<result>19</result>" and info["invalid"] is False


def test_step_flow_and_rewards(env: ToolCalcEnv) -> None:
    obs, reward, done, info = env.step("<calc> 12 + 7 </calc>")
    assert (obs, reward, done) == ("<result>19</result>", 0.0, False)
    assert info["tool"] == "calc" and info["result"] == 19 and not info["invalid"]
    obs, reward, done, info = env.step("<answer>52</answer>")
    assert (obs, reward, done) == ("", 1.0, True)
    assert info["tool"] == "answer" and info["answer"] == 52 and not info["truncated"]
    obs, reward, done, info = env.step("<answer>52</answer>")
    assert (obs, reward, done) == (ERR_DONE, 0.0, True) and info["invalid"]
    text = env.render()
    assert "Compute (12+7)*3-5" in text and "<result>19</result>" in text and "correct" in text


def test_wrong_answer_scores_zero(suite: ToolCalc, env: ToolCalcEnv) -> None:
    _, reward, done, info = env.step("<answer>51</answer>")
    assert reward == 0.0 and done and info["answer"] == 51
    assert not suite.verify(env.task, env)


def test_turn_cap() -> None:
    suite = ToolCalc(max_ops=2, max_turns=3, **SMALL)
    env = suite.make()
    env.reset(suite.tasks("val")[0])
    assert env.step("<calc>1+1</calc>")[2] is False
    assert env.step("oops")[2] is False
    obs, reward, done, info = env.step("<calc>2+2</calc>")
    assert done and info["truncated"] and reward == 0.0 and obs == ""
    assert not suite.verify(env.task, env)
    assert "truncated" in env.render()
    assert env.step("<answer>1</answer>")[2] is True


def test_answer_on_last_turn_is_not_truncated() -> None:
    suite = ToolCalc(max_ops=1, max_turns=2, **SMALL)
    task = suite.tasks("val")[0]
    env = run_episode(suite, task, ["junk", f"<answer>{task.answer}</answer>"])
    assert env.done and not env.truncated and suite.verify(task, env)


def test_step_before_reset_raises() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        ToolCalcEnv().step("<answer>1</answer>")


def natural_order(expr: str) -> list[tuple[int, str, int]]:
    """The binary operations of ``expr`` in Python's evaluation order."""
    symbols = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
    out: list[tuple[int, str, int]] = []

    def visit(node: ast.AST) -> int:
        if isinstance(node, ast.Constant):
            return node.value
        a, b = visit(node.left), visit(node.right)
        op = symbols[type(node.op)]
        out.append((a, op, b))
        return {"+": a + b, "-": a - b, "*": a * b}[op]

    visit(ast.parse(expr, mode="eval").body)
    return out


def test_tasks_are_consistent(suite: ToolCalc) -> None:
    for split in ("train", "val", "test"):
        for i, task in enumerate(suite.tasks(split)):
            expr, steps = task.meta["expr"], task.meta["steps"]
            assert task.id == f"toolcalc/{split}/{i}" and task.prompt == f"Compute {expr}"
            assert eval(expr) == task.answer == steps[-1]["result"]
            assert natural_order(expr) == [(s["a"], s["op"], s["b"]) for s in steps]
            assert 1 <= task.meta["num_ops"] == len(steps) <= suite.max_ops
            assert all(0 <= s["result"] <= suite.max_value for s in steps)
            assert len(task.prompt) <= 60


def test_oracle_solves_val_split(suite: ToolCalc) -> None:
    rng = random.Random(0)
    for task in suite.tasks("val"):
        actions = suite.oracle(task, rng, mistake_prob=0.0)
        assert len(actions) == task.meta["num_ops"] + 1
        env = run_episode(suite, task, actions)
        assert env.done and not env.truncated and suite.verify(task, env)
        assert not any(obs.startswith("error") for _, obs, _ in env.history)


def test_oracle_mistakes_fail() -> None:
    suite = ToolCalc(mistake_prob=1.0, **SMALL)
    rng = random.Random(0)
    results = []
    for task in suite.tasks("val"):
        env = run_episode(suite, task, suite.oracle(task, rng))
        assert env.done and not env.truncated
        assert all(h[1].startswith("<result>") for h in env.history[:-1])
        results.append(suite.verify(task, env))
    assert sum(results) <= 0.1 * len(results)


def test_oracle_mistake_rate_and_determinism() -> None:
    suite = ToolCalc(mistake_prob=0.3, guess_prob=0.0, **SMALL)
    tasks = suite.tasks("train")
    demos = [suite.oracle(t, random.Random(7)) for t in tasks]
    assert demos == [suite.oracle(t, random.Random(7)) for t in tasks]
    rng = random.Random(1)
    wins = [suite.verify(t, run_episode(suite, t, suite.oracle(t, rng))) for t in tasks]
    assert 0.55 <= sum(wins) / len(wins) <= 0.85


def test_splits_deterministic_and_seeded() -> None:
    a, b, c = ToolCalc(seed=0, **SMALL), ToolCalc(seed=0, **SMALL), ToolCalc(seed=1, **SMALL)
    for split in ("train", "val", "test"):
        assert a.tasks(split) == b.tasks(split)
        assert len(a.tasks(split)) == SMALL[f"num_{split}"]
        assert {t.prompt for t in a.tasks(split)} != {t.prompt for t in c.tasks(split)}


def test_splits_disjoint(suite: ToolCalc) -> None:
    texts = {s: {t.meta["expr"] for t in suite.tasks(s)} for s in ("train", "val", "test")}
    assert sum(map(len, texts.values())) == len(set().union(*texts.values()))


def test_unknown_split(suite: ToolCalc) -> None:
    with pytest.raises(ValueError, match="train, val, test"):
        suite.tasks("dev")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_turns": 0}, "max_turns must be >= 1, got 0"),
        ({"max_ops": 0}, "max_ops must be an int >= 1, got 0"),
        ({"num_train": 0}, "num_train must be an int >= 1, got 0"),
        ({"num_val": -1}, "num_val must be an int >= 1, got -1"),
        ({"num_test": 0}, "num_test must be an int >= 1, got 0"),
        ({"max_operand": 0}, "max_operand must be an int >= 1"),
        ({"max_action_tokens": 0}, "max_action_tokens must be an int >= 1"),
        ({"mistake_prob": 1.5}, r"mistake_prob must be in \[0, 1\], got 1.5"),
        ({"mistake_prob": -0.1}, r"mistake_prob must be in \[0, 1\]"),
        ({"max_ops": 5, "max_turns": 5}, "max_turns must be >= max_ops \\+ 1 = 6"),
        ({"max_value": 10}, "max_value must be an int in"),
        ({"max_value": 10**6}, "max_value must be an int in"),
        ({"max_ops": 1, "max_operand": 3, "num_train": 500}, "distinct expressions"),
    ],
)
def test_bad_args(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ToolCalc(**{**SMALL, **kwargs})


def test_yaml_instantiates() -> None:
    cfg = OmegaConf.load(CONF)
    suite = hydra.utils.instantiate(cfg)
    assert isinstance(suite, ToolCalc) and suite.name == "toolcalc"
    assert suite.mistake_prob == cfg.mistake_prob and len(suite.tasks("val")) == cfg.num_val
    assert suite.stop_strings == ["</calc>", "</answer>"]
    assert isinstance(suite.system_prompt, str) and len(suite.system_prompt) <= 80
    assert suite.max_turns >= suite.max_ops + 1 and suite.max_action_tokens > 0


def test_left_to_right_layout_and_guessing_demonstrator():
    suite = ToolCalc(max_ops=2, left_to_right=True, guess_prob=1.0, num_train=300)
    rng = random.Random(0)
    for task in suite.tasks("train"):
        steps = task.meta["steps"]
        # the running result is always the left operand of the next call
        assert all(s["carry"] in (None, "a") for s in steps)
        demo = suite.oracle(task, rng, mistake_prob=0.0)
        if any(s["op"] == "*" for s in steps):
            # the guessing demonstrator answers at once, and wrongly
            assert len(demo) == 1 and demo[0].startswith("<answer>")
            assert demo[0] != answer_action(task.answer)
        else:
            assert demo[-1] == answer_action(task.answer) and len(demo) == len(steps) + 1
