"""The helpers every env shares (agentrl/envs/base.py): splits, argument checks, the turn cap
and the render footer; codegen reports truncation like every other env."""

from __future__ import annotations

import pytest

from agentrl.envs import base
from agentrl.envs.codegen import CodeGen
from agentrl.envs.toolcalc import ToolCalc
from agentrl.envs.tooluse import ToolUse
from agentrl.types import Task

SMALL = {"num_train": 20, "num_val": 5, "num_test": 5}


def test_split_tasks_copies_and_names_the_valid_splits():
    splits = {s: [Task(id=f"{s}/0", prompt="p", answer=1)] for s in base.SPLITS}
    got = base.split_tasks(splits, "val")
    got.append(None)
    assert len(splits["val"]) == 1
    with pytest.raises(ValueError, match=r"unknown split 'dev'; valid splits: train, val, test"):
        base.split_tasks(splits, "dev")


@pytest.mark.parametrize(
    ("check", "args", "message"),
    [
        (base.check_ints, {"n": 0}, "n must be an int >= 1, got 0"),
        (base.check_ints, {"n": 1.0}, "n must be an int >= 1, got 1.0"),
        (base.check_probs, {"p": 1.5}, r"p must be in \[0, 1\], got 1.5"),
        (base.check_numbers, {"x": -1}, "x must be a number >= 0, got -1"),
    ],
)
def test_argument_checks_name_the_key_and_the_value(check, args, message):
    with pytest.raises(ValueError, match=message):
        check(args, list(args))
    base.check_ints({"n": 0}, ["n"], minimum=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ToolCalc(**SMALL),
        lambda: ToolUse(**SMALL),
        lambda: CodeGen(sources=["procedural"], **SMALL),
    ],
)
def test_every_suite_rejects_an_unknown_split_the_same_way(make):
    suite = make()
    with pytest.raises(ValueError, match=r"unknown split 'dev'; valid splits: train, val, test"):
        suite.tasks("dev")
    suite.tasks("train").clear()
    assert len(suite.tasks("train")) == SMALL["num_train"]


def test_codegen_runs_out_of_attempts_as_a_truncated_episode():
    suite = CodeGen(sources=["procedural"], max_revisions=2, **SMALL)
    env = suite.make()
    assert env.render() == "(not started)"
    env.reset(suite.tasks("train")[0])
    # malformed submissions use up attempts without running the sandbox
    steps = [env.step("no code here") for _ in range(3)]
    assert [s[2] for s in steps] == [False, False, True]
    assert [s[3]["truncated"] for s in steps] == [False, False, True]
    assert steps[-1][0] == "" and env.truncated
    assert env.render().endswith("[truncated after 3 turns]")
    obs, reward, done, info = env.step("more")
    assert (obs, reward, done) == (base.ERR_DONE, 0.0, True) and info["truncated"]
