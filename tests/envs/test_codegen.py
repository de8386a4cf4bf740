"""Tests of the codegen env: task sources, action parsing, grading in the sandbox, revisions,
the oracle and the verifier, hostile submissions, config."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from agentrl.envs.codegen.problems import PROBLEMS
from agentrl.envs.codegen.suite import CodeGen, code_action, parse_code
from agentrl.envs.codegen.tasks import program_code
from agentrl.envs.sandbox import Sandbox, namespaces_available
from tests.conftest import require_or_skip

CONF = Path(__file__).resolve().parents[2] / "conf" / "env" / "codegen.yaml"
NS, WHY = namespaces_available()
SMALL = {"num_train": 300, "num_val": 40, "num_test": 40}


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Sandbox:
    return Sandbox(
        cpu_seconds=1, wall_seconds=3, base_dir=str(tmp_path_factory.mktemp("sbx")), uid_base=400000
    )


@pytest.fixture(scope="module")
def suite(box) -> CodeGen:
    return CodeGen(seed=0, sandbox=box, per_test_seconds=0.5, **SMALL)


def first(suite: CodeGen, needs_parens: bool, split: str = "train"):
    return next(
        t
        for t in suite.tasks(split)
        if t.meta["source"] == "procedural" and t.meta["needs_parens"] == needs_parens
    )


def play(suite: CodeGen, task, actions: list[str]):
    env = suite.make()
    assert env.reset(task) == task.prompt
    steps = []
    for a in actions:
        steps.append(env.step(a))
        if steps[-1][2]:
            break
    return env, steps


# ----------------------------------------------------------------- task sources
def test_splits_are_deterministic_disjoint_and_hold_both_sources(suite, box):
    again = CodeGen(seed=0, sandbox=box, **SMALL)
    for split in ("train", "val", "test"):
        assert [t.prompt for t in suite.tasks(split)] == [t.prompt for t in again.tasks(split)]
    progs = {s: {t.meta["solution"] for t in suite.tasks(s)} for s in ("train", "val", "test")}
    assert not (progs["train"] & progs["val"]) and not (progs["train"] & progs["test"])
    assert not (progs["val"] & progs["test"])
    bundled = {s: [t for t in suite.tasks(s) if t.meta["source"] == "bundled"] for s in progs}
    assert sum(len(v) for v in bundled.values()) == len(PROBLEMS) >= 50
    assert len(bundled["val"]) == len(bundled["test"]) == round(0.2 * len(PROBLEMS))
    other = CodeGen(seed=1, sandbox=box, **SMALL)
    assert [t.id for t in other.tasks("val")] != [t.id for t in suite.tasks("val")]
    with pytest.raises(ValueError, match="unknown split"):
        suite.tasks("dev")


def test_procedural_prompt_states_the_spec_and_the_examples(suite):
    task = first(suite, needs_parens=True)
    lines = task.prompt.splitlines()
    assert lines[0].startswith("Write f(x): ") and ", then " in lines[0]
    assert len(lines) == 1 + 2 and all(" == " in line for line in lines[1:])
    assert len(task.meta["tests"]) == 5


def test_bundled_problems_are_well_formed():
    names = [p["name"] for p in PROBLEMS]
    assert len(set(names)) == len(names)
    for p in PROBLEMS:
        assert len(p["tests"]) >= 3, p["name"]
        assert parse_code(code_action(p["solution"]), p["name"], 4000)[1] is None, p["name"]


def test_every_bundled_reference_solution_passes_its_own_tests(suite):
    tasks = [t for s in ("train", "val", "test") for t in suite.tasks(s)]
    tasks = [t for t in tasks if t.meta["source"] == "bundled"]
    with ThreadPoolExecutor(4) as pool:
        grades = list(pool.map(lambda t: suite.grade(t, t.meta["solution"])[0], tasks))
    failed = {t.id: g.failures or g.note for t, g in zip(tasks, grades) if not g.all_passed}
    assert failed == {}


# ----------------------------------------------------------------- actions
@pytest.mark.parametrize(
    "text, error",
    [
        ("def f(x):\n    return x\n", "expected one ```python code block"),
        ("```python\n\n```", "the code block is empty"),
        ("```python\ndef f(x)\n    return x\n```", "SyntaxError line 1"),
        ("```python\ndef g(x):\n    return x\n```", "must define a function f"),
        ("```python\nf = lambda x: x\n```", "must define a function f"),
        ("```python\n" + "x = 1\n" * 100 + "```", "longer than 300 characters"),
        ("```python\nx = '\0'\n```", "error:"),
    ],
)
def test_malformed_submissions_are_refused_with_a_reason(text, error):
    code, err = parse_code(text, "f", 300)
    assert code is None and error in err


@pytest.mark.parametrize(
    "text",
    [
        "```python\ndef f(x):\n    return x\n```",
        "Here it is:\n```py\ndef f(x):\n    return x\n```\nDone.",
        "```\ndef f(x):\n    return x\n```",
    ],
)
def test_well_formed_submissions_are_accepted(text):
    assert parse_code(text, "f", 300) == ("def f(x):\n    return x\n", None)


def test_a_malformed_action_is_an_observation_and_uses_an_attempt(suite):
    task = first(suite, needs_parens=False)
    env, steps = play(suite, task, ["I think it is x+1", "```python\nreturn 3\n```"])
    (obs1, r1, d1, i1), (obs2, r2, d2, i2) = steps
    assert obs1.startswith("error: expected") and i1["invalid"] and r1 == 0.0 and not d1
    assert obs2.startswith("error: SyntaxError") and i2["invalid"] and not d2
    obs3, r3, d3, _ = env.step("nothing")
    assert d3 and obs3 == "" and not suite.verify(task, env)
    assert env.step("more")[0] == "error: episode is over"


# ----------------------------------------------------------------- grading and revisions
def test_a_revision_after_feedback_solves_it_and_rewards_sum_to_the_score(suite):
    task = first(suite, needs_parens=True)
    steps = [tuple(s) for s in task.meta["steps"]]
    bad = code_action(program_code(steps, parens=False))
    env, out = play(suite, task, [bad, code_action(task.meta["solution"])])
    (obs1, r1, d1, i1), (obs2, r2, d2, i2) = out
    assert obs1.startswith(f"passed {i1['passed']}/5") and not d1 and i1["passed"] < 5
    assert "expected" in obs1 and len(obs1.splitlines()) == 1 + 2  # two failures shown
    assert d2 and obs2 == "" and i2["passed"] == 5 and suite.verify(task, env)
    assert r1 + r2 == pytest.approx(1.0 + suite.all_pass_bonus)
    assert "[solved: 5/5 tests passed]" in env.render()


def test_partial_credit_is_the_fraction_passed(suite):
    task = first(suite, needs_parens=False)
    x0, y0 = task.meta["tests"][0]
    code = f"def f(x):\n    return {y0} if x == {x0[0]} else None\n"
    _, [(obs, reward, done, info)] = play(suite, task, [code_action(code)])
    assert info["passed"] == 1 and reward == pytest.approx(1 / 5) and not done
    assert "returned None, expected" in obs


def test_errors_in_the_function_are_reported_per_test(suite):
    task = first(suite, needs_parens=False)
    code = "def f(x):\n    return 1 // (x - x)\n"
    _, [(obs, reward, _, info)] = play(suite, task, [code_action(code)])
    assert "raised ZeroDivisionError" in obs and reward == 0.0 and info["sandbox"] == "ok"
    code = "import missing_module\ndef f(x):\n    return x\n"
    _, [(obs, _, _, _)] = play(suite, task, [code_action(code)])
    assert "loading the code raised ModuleNotFoundError" in obs


def test_types_must_match_exactly(suite):
    task = first(suite, needs_parens=False)
    code = "def f(x):\n    return str(" + task.meta["solution"].split("return ")[1].strip() + ")\n"
    _, [(obs, reward, _, info)] = play(suite, task, [code_action(code)])
    assert info["passed"] == 0 and reward == 0.0


# ----------------------------------------------------------------- hostile submissions
@pytest.mark.parametrize(
    "body, expect",
    [
        ("    while True:\n        pass\n", "TimeoutError"),
        # needs the namespaces: without them it could kill pytest
        ("    import os\n    os.kill(os.getppid(), 9)\n    return x\n", "PermissionError"),
        ("    import os\n    os.kill(0, 9)\n", "stopped: killed"),
        ("    import os\n    os._exit(3)\n", "exit 3"),
        ("    return 'x' * 10**9\n", "MemoryError"),
        ("    import socket\n    socket.create_connection(('1.1.1.1', 80))\n", "network access"),
    ],
)
def test_hostile_submissions_are_failed_attempts_and_the_episode_goes_on(suite, body, expect):
    if expect == "PermissionError" and not NS:
        require_or_skip(f"namespace isolation unavailable: {WHY}")
    task = first(suite, needs_parens=False)
    env, out = play(suite, task, [code_action("def f(x):\n" + body)])
    obs, reward, done, info = out[0]
    assert not done and reward == 0.0 and info["passed"] == 0 and not info["invalid"]
    assert expect in obs, obs
    obs2, _, done2, _ = env.step(code_action(task.meta["solution"]))
    assert done2 and suite.verify(task, env)


def test_forged_results_do_not_pass(suite):
    """The harness reports returned values only; the expected values never leave the parent."""
    task = first(suite, needs_parens=False)
    code = (
        "import json\n"
        "with open('results.jsonl', 'a') as f:\n"
        "    for i in range(5):\n"
        "        f.write(json.dumps({'i': i, 'value': 'True', 'passed': True}) + '\\n')\n"
        "def f(x):\n    return -12345\n"
    )
    _, [(_, reward, done, info)] = play(suite, task, [code_action(code)])
    assert info["passed"] == 0 and reward == 0.0 and not done


def test_a_broken_sandbox_is_a_counted_failed_attempt(tmp_path):
    broken = Sandbox(python=str(tmp_path / "no-python"), wall_seconds=2, base_dir=str(tmp_path))
    suite = CodeGen(seed=0, sources=["procedural"], sandbox=broken, **SMALL)
    task = suite.tasks("train")[0]
    env, [(obs, reward, done, info)] = play(suite, task, [code_action(task.meta["solution"])])
    assert obs.startswith("passed 0/5") and "stopped" in obs or "sandbox failed" in obs
    assert info["metrics"]["sandbox_failures"] == 1.0 and not done and reward == 0.0
    # failed runs are not cached: the same code is run again
    _, metrics = suite.grade(task, task.meta["solution"])
    assert metrics["sandbox_runs"] == 1.0


def test_clean_runs_are_cached(suite):
    task = suite.tasks("val")[3]
    g1, m1 = suite.grade(task, task.meta["solution"] + "# cache probe\n")
    g2, m2 = suite.grade(task, task.meta["solution"] + "# cache probe\n")
    assert m1["sandbox_runs"] == 1.0 and m2["sandbox_runs"] == 0.0 and g1 == g2


# ----------------------------------------------------------------- oracle and verifier
def test_the_oracle_and_the_verifier_agree(suite):
    rng = random.Random(0)
    tasks = suite.tasks("val")
    for task in tasks:
        env, _ = play(suite, task, suite.oracle(task, rng))
        assert suite.verify(task, env), env.render()


def test_the_demonstrator_slips_on_parentheses_and_rarely_fixes_them(box):
    stubborn = CodeGen(seed=0, sandbox=box, guess_prob=1.0, fix_prob=0.0, **SMALL)
    fixer = CodeGen(seed=0, sandbox=box, guess_prob=1.0, fix_prob=1.0, **SMALL)
    task = first(stubborn, needs_parens=True)
    demo = stubborn.oracle(task, random.Random(0))
    assert len(demo) == 3 and len(set(demo)) == 1
    env, _ = play(stubborn, task, demo)
    assert not stubborn.verify(task, env) and "passed" in env.render()
    demo = fixer.oracle(task, random.Random(0))
    env, steps = play(fixer, task, demo)
    assert len(demo) == 2 and fixer.verify(task, env) and not steps[0][2]
    plain = first(stubborn, needs_parens=False)
    assert stubborn.oracle(plain, random.Random(0)) == [code_action(plain.meta["solution"])]


def test_constant_mistakes_are_fixed_after_feedback(box):
    sloppy = CodeGen(seed=0, sandbox=box, mistake_prob=1.0, **SMALL)
    task = first(sloppy, needs_parens=False)
    demo = sloppy.oracle(task, random.Random(0))
    env, steps = play(sloppy, task, demo)
    assert len(demo) == 2 and len(steps) == 2 and sloppy.verify(task, env)


def test_verify_needs_the_same_task(suite):
    a, b = suite.tasks("val")[:2]
    env, _ = play(suite, a, [code_action(a.meta["solution"])])
    assert suite.verify(a, env) and not suite.verify(b, env)


# ----------------------------------------------------------------- config
def test_the_config_builds_the_suite_and_its_sandbox():
    cfg = OmegaConf.load(CONF)
    cfg.num_train, cfg.num_val, cfg.num_test = 50, 10, 10
    suite = hydra.utils.instantiate(cfg)
    assert isinstance(suite, CodeGen) and isinstance(suite.sandbox, Sandbox)
    assert suite.max_turns == 3 and suite.sources == ("procedural", "bundled")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sources": ["web"]}, "sources must be"),
        ({"sources": "procedural"}, "sources must be"),
        ({"max_revisions": -1}, "max_revisions must be"),
        ({"guess_prob": 1.5}, "guess_prob must be in"),
        ({"num_examples": 9}, "num_examples must be"),
        ({"num_train": 100000}, "distinct programs"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(box, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CodeGen(**{**SMALL, "sandbox": box, **kwargs})
