"""toolcalc: multi-step arithmetic solved with a calculator tool.

A task is an expression over small non-negative integers, e.g. ``Compute (12+7)*3-5``. The agent
acts one action per turn, either a tool call or the final answer::

    <calc>12+7</calc>      ->  observation "<result>19</result>"
    <answer>52</answer>    ->  episode ends; step reward 1.0 if 52 is right, else 0.0

Anything else is malformed: ``step`` answers with an ``error: ...`` observation and
``info["invalid"] = True``, and the episode goes on until the turn cap.

Every expression is built as a chain: each binary step combines the previous step's result with
one new number, and parentheses are added so that the usual evaluation order (precedence, then
left to right) performs the steps in exactly the order stored in ``Task.meta["steps"]``.
"""

from __future__ import annotations

import operator
import random
import re
from dataclasses import dataclass
from typing import Any

from agentrl.envs.base import (
    ERR_DONE,
    SPLITS,
    check_ints,
    check_probs,
    record_step,
    render_episode,
    split_tasks,
)
from agentrl.types import Task

SYSTEM_PROMPT = "Use <calc>A op B</calc> one step a turn, then <answer>N</answer>."
ERR_FORMAT = "error: expected <calc>A op B</calc> or <answer>N</answer>"
ERR_CALC = "error: calc takes A op B, op one of + - *"
ERR_ANSWER = "error: answer takes one integer"
# the most digits a number in an action may have
MAX_DIGITS = 6

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_INT = rf"-?[0-9]{{1,{MAX_DIGITS}}}"
_ACTION_RE = re.compile(r"\s*<(calc|answer)>(.*)</\1>\s*", re.DOTALL)
_CALC_RE = re.compile(rf"\s*({_INT})\s*([-+*])\s*({_INT})\s*")
_ANSWER_RE = re.compile(rf"\s*({_INT})\s*")


@dataclass(frozen=True)
class Action:
    """A parsed action: ``tool`` is "calc" or "answer" (None when unreadable).

    args: ``(a, op, b)`` for calc, ``(n,)`` for answer; error: the error observation, or None.
    """

    tool: str | None
    args: tuple = ()
    error: str | None = None


def parse_action(text: str) -> Action:
    """Parse one action; never raises. A malformed action has ``error`` set."""
    m = _ACTION_RE.fullmatch(text)
    if m is None or "<" in m.group(2) or ">" in m.group(2):
        return Action(None, error=ERR_FORMAT)
    tool, body = m.group(1), m.group(2)
    if tool == "calc":
        c = _CALC_RE.fullmatch(body)
        if c is None:
            return Action("calc", error=ERR_CALC)
        return Action("calc", (int(c.group(1)), c.group(2), int(c.group(3))))
    a = _ANSWER_RE.fullmatch(body)
    if a is None:
        return Action("answer", error=ERR_ANSWER)
    return Action("answer", (int(a.group(1)),))


def calc_action(a: int, op: str, b: int) -> str:
    """The canonical text of a calculator call."""
    return f"<calc>{a}{op}{b}</calc>"


def answer_action(n: int) -> str:
    """The canonical text of an answer."""
    return f"<answer>{n}</answer>"


class ToolCalcEnv:
    """One toolcalc episode: ``reset(task)``, then ``step(action)`` until done."""

    def __init__(self, system_prompt: str = SYSTEM_PROMPT, max_turns: int = 6):
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.task: Task | None = None
        self.history: list[tuple[str, str, float]] = []
        self.done = False
        self.truncated = False
        self.final_answer: int | None = None

    def reset(self, task: Task) -> str:
        """Start an episode on ``task``; returns the initial observation (the prompt)."""
        self.task = task
        self.history = []
        self.done = self.truncated = False
        self.final_answer = None
        return task.prompt

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Apply one action; returns ``(observation, reward, done, info)``."""
        if self.task is None:
            raise RuntimeError("ToolCalcEnv.step called before reset(task)")
        if self.done:
            return ERR_DONE, 0.0, True, self._info(None, ERR_DONE)
        parsed = parse_action(action)
        obs, reward, info = self._apply(parsed)
        return record_step(self, action, obs, reward, info)

    def _apply(self, parsed: Action) -> tuple[str, float, dict[str, Any]]:
        if parsed.error is not None:
            return parsed.error, 0.0, self._info(None, parsed.error)
        if parsed.tool == "calc":
            a, op, b = parsed.args
            result = _OPS[op](a, b)
            return f"<result>{result}</result>", 0.0, self._info("calc", result=result)
        self.done = True
        self.final_answer = parsed.args[0]
        reward = 1.0 if self.final_answer == self.task.answer else 0.0
        return "", reward, self._info("answer", answer=self.final_answer)

    def _info(self, tool: str | None, error: str | None = None, **extra: Any) -> dict[str, Any]:
        info = {
            "tool": tool,
            "invalid": error is not None,
            "truncated": self.truncated,
            "answer": None,
            "result": None,
            "error": error,
            "turn": len(self.history),
        }
        info.update(extra)
        return info

    def render(self) -> str:
        """A readable transcript of the episode so far."""
        return render_episode(self, self._verdict)

    def _verdict(self) -> str:
        verdict = "correct" if self.final_answer == self.task.answer else "wrong"
        return f"[answer {self.final_answer}: {verdict}, expected {self.task.answer}]"


class ToolCalc:
    """The toolcalc env suite: deterministic task splits, episode envs, oracle, verifier.

    Args:
        seed: seed of the task generator (fixes all three splits).
        num_train, num_val, num_test: split sizes; the splits are disjoint by expression text.
        max_ops: each task has 1..max_ops binary operations (drawn uniformly, before dedup).
        max_operand: numbers in an expression are drawn from 0..max_operand.
        max_value: every intermediate and final result stays in 0..max_value.
        max_turns: turns per episode (calls, malformed actions and the answer all count).
        max_action_tokens: tokens the policy may generate in one turn.
        mistake_prob: probability that one oracle demonstration contains a realistic mistake.
        left_to_right: every step takes the running result as its left operand, so the
            calculator calls follow the expression from left to right (parenthesised as needed).
        guess_prob: probability that the demonstrator, facing a task with a multiplication, skips
            the calculator and answers at once from (wrong) mental arithmetic. A systematic flaw
            that imitation copies and greedy decoding keeps; outcome-based RL can undo it.
        system_prompt: the system message of every episode (null: the short default, enough
            after a warm start; a pretrained model without one needs the syntax spelled out).
    """

    name = "toolcalc"
    stop_strings = ["</calc>", "</answer>"]

    def __init__(
        self,
        seed: int = 0,
        num_train: int = 5000,
        num_val: int = 200,
        num_test: int = 200,
        max_ops: int = 2,
        max_operand: int = 20,
        max_value: int = 999,
        max_turns: int = 6,
        max_action_tokens: int = 24,
        mistake_prob: float = 0.05,
        guess_prob: float = 0.75,
        left_to_right: bool = True,
        system_prompt: str | None = None,
    ):
        _check_args(locals())
        self.seed = seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.max_ops = max_ops
        self.max_operand = max_operand
        self.max_value = max_value
        self.max_turns = max_turns
        self.max_action_tokens = max_action_tokens
        self.mistake_prob = float(mistake_prob)
        self.guess_prob = float(guess_prob)
        self.left_to_right = bool(left_to_right)
        self.system_prompt = SYSTEM_PROMPT if system_prompt is None else system_prompt
        self.stop_strings = list(type(self).stop_strings)
        self._splits = self._generate()

    def tasks(self, split: str) -> list[Task]:
        """The tasks of ``split`` ("train", "val" or "test"), identical for a given seed."""
        return split_tasks(self._splits, split)

    def make(self) -> ToolCalcEnv:
        """A fresh episode env."""
        return ToolCalcEnv(self.system_prompt, self.max_turns)

    def oracle(
        self, task: Task, rng: random.Random, mistake_prob: float | None = None
    ) -> list[str]:
        """A demonstration for ``task``: the calc calls in order, then the answer.

        With probability ``mistake_prob`` (the suite's unless given) the demonstration holds one
        realistic mistake and ends with a wrong answer. Deterministic given ``rng``.
        """
        p = self.mistake_prob if mistake_prob is None else mistake_prob
        steps = task.meta["steps"]
        if any(s["op"] == "*" for s in steps) and rng.random() < self.guess_prob:
            return [answer_action(_typo(task.answer, rng))]
        if rng.random() < p:
            return _mistaken_demo(steps, task.answer, rng)
        return [calc_action(s["a"], s["op"], s["b"]) for s in steps] + [answer_action(task.answer)]

    def verify(self, task: Task, env: ToolCalcEnv) -> bool:
        """Whether the finished episode ``env`` answered ``task`` correctly."""
        answer = getattr(env, "final_answer", None)
        return bool(getattr(env, "done", False)) and answer is not None and answer == task.answer

    def _generate(self) -> dict[str, list[Task]]:
        rng = random.Random(self.seed)
        order = ("test", "val", "train")
        total = sum(self.sizes.values())
        seen: dict[str, list[dict[str, Any]]] = {}
        for _ in range(20 * total + 1000):
            if len(seen) == total:
                break
            expr, steps = _gen_expression(
                rng, self.max_ops, self.max_operand, self.max_value, self.left_to_right
            )
            seen.setdefault(expr, steps)
        if len(seen) < total:
            raise ValueError(
                f"only {len(seen)} distinct expressions found for {total} tasks; lower "
                "num_train/num_val/num_test or raise max_ops/max_operand/max_value"
            )
        items = list(seen.items())
        splits, start = {}, 0
        for split in order:
            chunk = items[start : start + self.sizes[split]]
            splits[split] = [_make_task(split, i, e, s) for i, (e, s) in enumerate(chunk)]
            start += self.sizes[split]
        return {s: splits[s] for s in SPLITS}


def _check_args(args: dict[str, Any]) -> None:
    check_ints(
        args, ("num_train", "num_val", "num_test", "max_ops", "max_operand", "max_action_tokens")
    )
    if not isinstance(args["max_turns"], int) or args["max_turns"] < 1:
        raise ValueError(f"max_turns must be >= 1, got {args['max_turns']!r}")
    if args["max_turns"] < args["max_ops"] + 1:
        raise ValueError(
            f"max_turns must be >= max_ops + 1 = {args['max_ops'] + 1} so every task fits, "
            f"got {args['max_turns']}"
        )
    mv = args["max_value"]
    if not isinstance(mv, int) or not args["max_operand"] <= mv < 10**MAX_DIGITS:
        raise ValueError(
            f"max_value must be an int in [max_operand, {10**MAX_DIGITS - 1}], got {mv!r}"
        )
    check_probs(args, ("mistake_prob", "guess_prob"))
    prompt = args["system_prompt"]
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise ValueError(f"system_prompt must be a non-empty string or null, got {prompt!r}")


def _make_task(split: str, i: int, expr: str, steps: list[dict[str, Any]]) -> Task:
    return Task(
        id=f"toolcalc/{split}/{i}",
        prompt=f"Compute {expr}",
        answer=steps[-1]["result"],
        meta={"expr": expr, "steps": steps, "num_ops": len(steps)},
    )


def _gen_expression(
    rng: random.Random, max_ops: int, max_operand: int, max_value: int, left_to_right: bool = False
) -> tuple[str, list[dict[str, Any]]]:
    """A chained expression and its steps, each ``{a, op, b, result, carry}``.

    ``carry`` names the operand ("a" or "b") that is the previous step's result (None first).
    """
    value = rng.randint(0, max_operand)
    text, top, steps = str(value), None, []
    for i in range(rng.randint(1, max_ops)):
        op, b, carry_right = _draw_step(rng, value, max_operand, max_value, left_to_right)
        if carry_right:
            wrap = top is not None and not (top == "*" and op in "+-")
            text = f"{b}{op}({text})" if wrap else f"{b}{op}{text}"
            a_, b_ = b, value
        else:
            wrap = op == "*" and top in ("+", "-")
            text = f"({text}){op}{b}" if wrap else f"{text}{op}{b}"
            a_, b_ = value, b
        value = _OPS[op](a_, b_)
        carry = None if i == 0 else ("b" if carry_right else "a")
        steps.append({"a": a_, "op": op, "b": b_, "result": value, "carry": carry})
        top = op
    return text, steps


def _draw_step(
    rng: random.Random, value: int, max_operand: int, max_value: int, left_to_right: bool = False
) -> tuple[str, int, bool]:
    """One op and new number keeping the result in [0, max_value]; True if the new number
    goes on the left (the running value on the right; never when ``left_to_right``)."""
    op = rng.choice("+-*")
    right = 0.0 if left_to_right else 0.5
    if op == "+":
        return op, rng.randint(0, min(max_operand, max_value - value)), rng.random() < right
    if op == "*":
        hi = max_operand if value == 0 else min(max_operand, max_value // value)
        return op, rng.randint(1, hi), rng.random() < right
    if value <= max_operand and rng.random() < right:
        return op, rng.randint(value, max_operand), True
    return op, rng.randint(0, min(max_operand, value)), False


def _typo(n: int, rng: random.Random) -> int:
    """``n`` with one digit replaced by a different one (no new leading zero)."""
    digits = str(abs(n))
    pos = rng.randrange(len(digits))
    banned = {digits[pos]} | ({"0"} if pos == 0 and len(digits) > 1 else set())
    new = rng.choice([d for d in "0123456789" if d not in banned])
    out = int(digits[:pos] + new + digits[pos + 1 :])
    return -out if n < 0 else out


def _replay(
    steps: list[dict[str, Any]], typo_at: int, side: str, typo_value: int
) -> tuple[list[tuple[int, str, int]], int]:
    """Redo the steps with one operand mistyped, carrying the wrong results forward."""
    calls, prev = [], 0
    for i, s in enumerate(steps):
        ops = {"a": s["a"], "b": s["b"]}
        if s["carry"] is not None:
            ops[s["carry"]] = prev
        if i == typo_at:
            ops[side] = typo_value
        prev = _OPS[s["op"]](ops["a"], ops["b"])
        calls.append((ops["a"], s["op"], ops["b"]))
    return calls, prev


def _mistaken_demo(steps: list[dict[str, Any]], answer: int, rng: random.Random) -> list[str]:
    """A demonstration with one mistake that ends in a wrong answer."""
    calls = [(s["a"], s["op"], s["b"]) for s in steps]
    kind = rng.choice(["operand_typo", "answer_typo"] + ["early_answer"] * (len(steps) > 1))
    final = answer
    if kind == "operand_typo":
        i, side = rng.randrange(len(steps)), rng.choice("ab")
        calls, final = _replay(steps, i, side, _typo(steps[i][side], rng))
    elif kind == "early_answer":
        i = rng.randrange(len(steps) - 1)
        calls, final = calls[: i + 1], steps[i]["result"]
    numbers = [final] + [x for a, _, b in calls for x in (a, b)]
    if final == answer or any(len(str(abs(x))) > MAX_DIGITS for x in numbers):
        calls, final = [(s["a"], s["op"], s["b"]) for s in steps], _typo(answer, rng)
    return [calc_action(*c) for c in calls] + [answer_action(final)]
