"""codegen: write a Python function from a specification and examples; hidden tests judge it.

The agent answers with one fenced code block defining the function::

    ```python
    def f(x):
        return (x+3)*2
    ```

The env runs every hidden test of the task in a :mod:`~agentrl.envs.sandbox` process and answers
with the failures (``passed 3/5`` and the first failing calls, truncated); the agent may revise
up to ``max_revisions`` times. The episode ends when every test passes or the attempts run out
(the shared turn cap of ``agentrl.envs.base``: truncated, ``info["truncated"] = True``).
A reply without a code block, with a syntax error or without the function is malformed: an
``error: ...`` observation, ``info["invalid"] = True``, and it uses up an attempt.

Reward: each graded submission scores ``passed/total + all_pass_bonus * (all passed)``; the step
reward is the change of that score, so an episode's rewards sum to the score of its last graded
submission (``reward=env_return`` trains on that sum). The verifier: the last graded submission
passed every test. A program the sandbox kills (time, memory, output limits) or a sandbox that
fails to start is a failed attempt with a readable reason, counted in ``info["metrics"]``.

The sandbox only reports the values the function returned; the expected values stay in this
process, so a program cannot fake a pass by printing or writing results.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agentrl.envs.base import (
    ERR_DONE,
    SPLITS,
    check_ints,
    check_numbers,
    check_probs,
    record_step,
    render_episode,
    split_tasks,
)
from agentrl.envs.codegen.tasks import (
    STEP_OPS,
    bundled_tasks,
    call_text,
    procedural_tasks,
    program_code,
)
from agentrl.envs.sandbox import Sandbox, SandboxResult
from agentrl.types import Task

SYSTEM_PROMPT = "Reply with one ```python block defining the function. Failed tests come back."
ERR_NO_BLOCK = "error: expected one ```python code block"
SOURCES = ("procedural", "bundled")

_BLOCK_RE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)

# Runs in the sandbox: loads submission.py, calls the function on each input, writes one JSON
# line per test with the repr of the returned value (or the exception). Nothing else.
HARNESS = r"""
import ast, json, signal, sys
with open("tests.txt") as f:
    cfg = ast.literal_eval(f.read())
out = open("results.jsonl", "w")
def emit(rec):
    out.write(json.dumps(rec) + "\n")
    out.flush()
def timeout(signum, frame):
    raise TimeoutError("the call took longer than %ss" % cfg["per_test_seconds"])
ns = {"__name__": "submission"}
try:
    with open("submission.py") as f:
        exec(compile(f.read(), "submission.py", "exec"), ns)
    fn = ns[cfg["name"]]
except BaseException as e:
    emit({"load_error": ("%s: %s" % (type(e).__name__, e))[:300]})
    sys.exit(0)
signal.signal(signal.SIGALRM, timeout)
for i, args in enumerate(cfg["inputs"]):
    try:
        signal.setitimer(signal.ITIMER_REAL, cfg["per_test_seconds"])
        value = fn(*args)
        signal.setitimer(signal.ITIMER_REAL, 0)
        rec = {"i": i, "value": repr(value)[:2000]}
    except BaseException as e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        rec = {"i": i, "error": ("%s: %s" % (type(e).__name__, e))[:300]}
    emit(rec)
"""


@dataclass
class Grade:
    """The outcome of running one submission on a task's tests.

    passed, total: tests passed and run; failures: one readable line per failed test, in order;
    note: a line about the whole run (a load error, the sandbox stopping the program) or None;
    sandbox: the sandbox run's status ("ok", "timeout", "SIGXCPU", "error", ...).
    """

    passed: int
    total: int
    failures: list[str] = field(default_factory=list)
    note: str | None = None
    sandbox: str = "ok"

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


def parse_code(text: str, name: str, max_chars: int) -> tuple[str | None, str | None]:
    """``(code, None)`` for a well-formed submission defining ``name``, else ``(None, error)``."""
    m = _BLOCK_RE.search(text)
    if m is None:
        return None, ERR_NO_BLOCK
    code = m.group(1)
    if not code.strip():
        return None, "error: the code block is empty"
    if len(code) > max_chars:
        return None, f"error: the code is longer than {max_chars} characters"
    try:
        tree = ast.parse(code)
        compile(tree, "submission.py", "exec")  # e.g. 'return' outside function; runs nothing
    except SyntaxError as exc:
        return None, f"error: SyntaxError line {exc.lineno}: {exc.msg}"
    except ValueError as exc:  # e.g. a null byte
        return None, f"error: unreadable code: {exc}"
    if not any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body):
        return None, f"error: the code must define a function {name}"
    return code, None


def code_action(code: str) -> str:
    """The canonical text of a submission."""
    return f"```python\n{code}```"


def _stop_reason(res: SandboxResult, wall: float) -> str:
    if res.error is not None:
        return f"the sandbox failed: {res.error}"
    if res.timed_out:
        return f"the program was stopped: wall-clock limit of {wall:g}s"
    reasons = {
        "SIGXCPU": "CPU time limit",
        "SIGKILL": "killed (CPU or memory limit)",
        "SIGXFSZ": "file size limit",
        "SIGSEGV": "crashed (segmentation fault)",
    }
    status = res.status
    tail = res.stderr.strip().splitlines()[-1:] if res.stderr.strip() else []
    why = reasons.get(status, status)
    return f"the program was stopped: {why}" + (f" ({tail[0][:120]})" if tail else "")


def grade_result(task: Task, res: SandboxResult, wall: float) -> Grade:
    """Compare what the sandboxed harness reported with the task's expected values."""
    meta = task.meta
    tests = meta["tests"]
    records: dict[int, dict] = {}
    load_error = None
    for line in res.files.get("results.jsonl", "").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "load_error" in rec and load_error is None:
            load_error = str(rec["load_error"])
        elif isinstance(rec, dict) and isinstance(rec.get("i"), int):
            records.setdefault(rec["i"], rec)
    note = f"loading the code raised {load_error}" if load_error else None
    if not load_error and (res.status != "ok" or len(records) < len(tests)):
        note = _stop_reason(res, wall) if res.status != "ok" else "the program ended early"
    passed, failures = 0, []
    for i, (args, expected) in enumerate(tests):
        call = call_text(meta["name"], args)
        rec = records.get(i)
        if rec is None:
            failures.append(f"{call}: no result")
        elif "error" in rec:
            failures.append(f"{call} raised {rec['error']}")
        elif _same(_literal(rec.get("value")), expected):
            passed += 1
        else:
            failures.append(f"{call} returned {str(rec.get('value'))[:80]}, expected {expected!r}")
    return Grade(passed, len(tests), failures, note, res.status)


_UNREADABLE = object()


def _literal(text: Any) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _UNREADABLE


def _same(got: Any, expected: Any) -> bool:
    """Equal values of the same types (True is not 1; floats to 1e-9 relative)."""
    if type(got) is not type(expected):
        return False
    if isinstance(expected, float):
        return abs(got - expected) <= 1e-9 * max(1.0, abs(expected))
    if isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(_same(a, b) for a, b in zip(got, expected))
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k]) for k in got)
    return got == expected


class CodeGenEnv:
    """One codegen episode: ``reset(task)``, then ``step(submission)`` until done."""

    def __init__(self, suite: CodeGen):
        self.suite = suite
        self.system_prompt = suite.system_prompt
        self.max_turns = suite.max_turns
        self.task: Task | None = None
        self.history: list[tuple[str, str, float]] = []
        self.done = self.truncated = False
        self.score = 0.0
        self.last_grade: Grade | None = None

    @property
    def all_passed(self) -> bool:
        return self.last_grade is not None and self.last_grade.all_passed

    def reset(self, task: Task) -> str:
        """Start an episode on ``task``; returns the initial observation (the prompt)."""
        self.task = task
        self.history = []
        self.done = self.truncated = False
        self.score = 0.0
        self.last_grade = None
        return task.prompt

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Grade one submission; returns ``(observation, reward, done, info)``."""
        if self.task is None:
            raise RuntimeError("CodeGenEnv.step called before reset(task)")
        if self.done:
            return ERR_DONE, 0.0, True, self._info(ERR_DONE)
        code, error = parse_code(action, self.task.meta["name"], self.suite.max_code_chars)
        if error is not None:
            obs, reward, info = error, 0.0, self._info(error)
        else:
            grade, metrics = self.suite.grade(self.task, code)
            self.last_grade = grade
            new = self.suite.score(grade)
            reward, self.score = new - self.score, new
            obs = self.suite.feedback(grade)
            info = self._info(None, passed=grade.passed, total=grade.total, sandbox=grade.sandbox)
            info["metrics"] = metrics
            self.done = grade.all_passed
            if self.done:
                obs = ""
        # the last attempt ends the episode as truncated (unless it passed everything)
        return record_step(self, action, obs, reward, info)

    def _info(self, error: str | None, **extra: Any) -> dict[str, Any]:
        info = {
            "invalid": error is not None,
            "error": error,
            "truncated": self.truncated,
            "turn": len(self.history),
            "passed": None,
            "total": None,
            "sandbox": None,
        }
        info.update(extra)
        return info

    def render(self) -> str:
        """A readable transcript of the episode so far."""
        return render_episode(self, self._verdict, reward_format="{:+.3f}")

    def _verdict(self) -> str:
        g = self.last_grade
        res = f"{g.passed}/{g.total} tests passed" if g else "no graded submission"
        return f"[{'solved' if self.all_passed else 'not solved'}: {res}]"


class CodeGen:
    """The codegen env suite: task splits, episode envs, oracle, verifier, the sandbox.

    Args:
        seed: seed of the task sources (fixes every split).
        sources: "procedural" and/or "bundled"; each split is the union of theirs.
        num_train, num_val, num_test: procedural split sizes (disjoint by program).
        max_steps: a procedural function applies 1..max_steps integer steps.
        max_constant: largest constant in a procedural step.
        num_tests: hidden tests of a procedural task; num_examples of them are shown.
        bundled_val_fraction, bundled_test_fraction: shares of the bundled problems in val/test.
        max_revisions: submissions after the first; the episode has 1 + max_revisions turns.
        all_pass_bonus: added to the score of a submission that passes every test.
        max_action_tokens: tokens the policy may generate in one turn.
        max_failures_shown: failing tests listed in a feedback observation.
        max_feedback_chars: feedback observations are cut to this many characters.
        max_code_chars: longer submissions are malformed.
        per_test_seconds: wall-clock limit of one test call inside the sandbox.
        guess_prob: probability that the demonstrator, on a task that ``needs_parens``, first
            writes the steps left to right without parentheses (wrong).
        fix_prob: probability that the demonstrator, after a failed attempt of that kind, reads
            the feedback and fixes it; otherwise it resubmits the same code. A systematic flaw of
            the demonstrations that imitation copies and outcome-based RL can undo.
        mistake_prob: probability that a procedural demonstration first submits a wrong
            constant, then fixes it after the test feedback.
        cache_size: graded (task, code) pairs remembered (only clean sandbox runs are cached).
        sandbox: the :class:`~agentrl.envs.sandbox.Sandbox` (None: one with default limits).
    """

    name = "codegen"
    stop_strings = ["\n```"]

    def __init__(
        self,
        seed: int = 0,
        sources: tuple[str, ...] | list[str] = SOURCES,
        num_train: int = 2000,
        num_val: int = 200,
        num_test: int = 200,
        max_steps: int = 2,
        max_constant: int = 12,
        num_tests: int = 5,
        num_examples: int = 2,
        bundled_val_fraction: float = 0.2,
        bundled_test_fraction: float = 0.2,
        max_revisions: int = 2,
        all_pass_bonus: float = 0.5,
        max_action_tokens: int = 160,
        max_failures_shown: int = 2,
        max_feedback_chars: int = 300,
        max_code_chars: int = 4000,
        per_test_seconds: float = 1.0,
        guess_prob: float = 0.0,
        fix_prob: float = 1.0,
        mistake_prob: float = 0.0,
        cache_size: int = 4096,
        sandbox: Sandbox | None = None,
    ):
        _check_args(locals())
        self.seed = seed
        self.sources = tuple(sources)
        self.max_revisions = max_revisions
        self.max_turns = 1 + max_revisions
        self.all_pass_bonus = float(all_pass_bonus)
        self.max_action_tokens = max_action_tokens
        self.max_failures_shown = max_failures_shown
        self.max_feedback_chars = max_feedback_chars
        self.max_code_chars = max_code_chars
        self.per_test_seconds = float(per_test_seconds)
        self.guess_prob = float(guess_prob)
        self.fix_prob = float(fix_prob)
        self.mistake_prob = float(mistake_prob)
        self.max_constant = max_constant
        self.cache_size = cache_size
        self.system_prompt = SYSTEM_PROMPT
        self.stop_strings = list(type(self).stop_strings)
        self._cache: OrderedDict[tuple[str, str], Grade] = OrderedDict()
        self._splits: dict[str, list[Task]] = {s: [] for s in SPLITS}
        if "procedural" in self.sources:
            sizes = {"train": num_train, "val": num_val, "test": num_test}
            proc = procedural_tasks(seed, sizes, max_steps, max_constant, num_tests, num_examples)
            for s in SPLITS:
                self._splits[s] += proc[s]
        if "bundled" in self.sources:
            bund = bundled_tasks(seed, bundled_val_fraction, bundled_test_fraction)
            for s in SPLITS:
                self._splits[s] += bund[s]
        self.sandbox = sandbox if sandbox is not None else Sandbox()

    def tasks(self, split: str) -> list[Task]:
        """The tasks of ``split`` ("train", "val" or "test"), identical for a given seed."""
        return split_tasks(self._splits, split)

    def make(self) -> CodeGenEnv:
        """A fresh episode env (it holds no resources: each sandbox run cleans up after itself)."""
        return CodeGenEnv(self)

    def verify(self, task: Task, env: CodeGenEnv) -> bool:
        """Whether the last graded submission of ``env`` passed every test of ``task``."""
        return (
            bool(getattr(env, "all_passed", False))
            and env.task is not None
            and (env.task.id == task.id)
        )

    def score(self, grade: Grade) -> float:
        """Fraction of tests passed, plus the bonus when all pass."""
        frac = grade.passed / grade.total if grade.total else 0.0
        return frac + self.all_pass_bonus * float(grade.all_passed)

    def oracle(self, task: Task, rng: random.Random) -> list[str]:
        """A demonstration: submissions in order (later ones only matter after a failure).

        Bundled tasks: the reference solution. Procedural tasks: the reference solution, except
        for the demonstrator's deliberate flaws (``guess_prob``/``fix_prob``, ``mistake_prob``).
        """
        meta = task.meta
        good = code_action(meta["solution"])
        if meta["source"] != "procedural":
            return [good]
        steps = [tuple(s) for s in meta["steps"]]
        if meta["needs_parens"] and rng.random() < self.guess_prob:
            bad = code_action(program_code(steps, parens=False))
            out = [bad]
            for _ in range(self.max_revisions):
                if rng.random() < self.fix_prob:
                    return out + [good]
                out.append(bad)
            return out
        if self.max_revisions and rng.random() < self.mistake_prob:
            i = rng.randrange(len(steps))
            op, k = steps[i]
            wrong = rng.choice([c for c in range(STEP_OPS[op][1], self.max_constant + 1) if c != k])
            bad_steps = steps[:i] + [(op, wrong)] + steps[i + 1 :]
            return [code_action(program_code(bad_steps)), good]
        return [good]

    def grade(self, task: Task, code: str) -> tuple[Grade, dict[str, float]]:
        """Run ``code`` on ``task``'s tests in the sandbox; returns the grade and run counters."""
        key = (task.id, code)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key], {"sandbox_runs": 0.0, "sandbox_failures": 0.0}
        meta = task.meta
        spec = {
            "name": meta["name"],
            "inputs": [args for args, _ in meta["tests"]],
            "per_test_seconds": self.per_test_seconds,
        }
        res = self.sandbox.run(
            HARNESS,
            files={"submission.py": code, "tests.txt": repr(spec)},
            collect=("results.jsonl",),
        )
        grade = grade_result(task, res, self.sandbox.wall_seconds)
        metrics = {
            "sandbox_runs": 1.0,
            "sandbox_failures": float(res.status != "ok"),
            "sandbox_timeouts": float(res.timed_out),
            "sandbox_errors": float(res.error is not None),
        }
        if res.status == "ok" and self.cache_size:
            self._cache[key] = grade
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return grade, metrics

    def feedback(self, grade: Grade) -> str:
        """The observation after a graded submission that did not pass everything."""
        lines = [f"passed {grade.passed}/{grade.total}"]
        if grade.note:
            lines.append(grade.note)
        lines += grade.failures[: self.max_failures_shown]
        text = "\n".join(lines)
        if len(text) > self.max_feedback_chars:
            text = text[: self.max_feedback_chars - 3] + "..."
        return text


def _check_args(args: dict[str, Any]) -> None:
    sources = args["sources"]
    if isinstance(sources, str) or not sources or any(s not in SOURCES for s in sources):
        raise ValueError(
            f"sources must be a non-empty list of {', '.join(SOURCES)}, got {sources!r}"
        )
    check_ints(
        args,
        (
            "num_train",
            "num_val",
            "num_test",
            "max_steps",
            "max_constant",
            "num_tests",
            "max_action_tokens",
            "max_failures_shown",
            "max_feedback_chars",
            "max_code_chars",
        ),
    )
    if args["max_constant"] < 2:
        raise ValueError(f"max_constant must be >= 2, got {args['max_constant']}")
    if (
        not isinstance(args["num_examples"], int)
        or not 0 <= args["num_examples"] <= args["num_tests"]
    ):
        raise ValueError(
            f"num_examples must be an int in [0, num_tests], got {args['num_examples']!r}"
        )
    check_ints(args, ("max_revisions", "cache_size"), minimum=0)
    check_probs(
        args,
        ("guess_prob", "fix_prob", "mistake_prob", "bundled_val_fraction", "bundled_test_fraction"),
    )
    if args["bundled_val_fraction"] + args["bundled_test_fraction"] >= 1.0:
        raise ValueError("bundled_val_fraction + bundled_test_fraction must be < 1")
    check_numbers(args, ("all_pass_bonus", "per_test_seconds"))
