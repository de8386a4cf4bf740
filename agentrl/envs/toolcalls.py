"""JSON function calling, the format chat templates use, shared by the tool-using envs.

An action is one of::

    <tool_call>{"name": "calc", "arguments": {"expression": "4*3"}}</tool_call>
    <answer>12</answer>

(Qwen2's chat template wraps calls the same way.) ``parse_action`` never raises: a malformed
action comes back with ``error`` set to the observation the agent reads. ``ToolSpec`` validates a
call's arguments (missing, unexpected, wrongly typed) before a tool runs; ``calculator`` evaluates
arithmetic with Python's ``ast`` (numbers, + - * / //, parentheses; nothing else).
"""

from __future__ import annotations

import ast
import json
import math
import operator
import random
import re
from dataclasses import dataclass, field
from typing import Any

ERR_FORMAT = 'error: expected <tool_call>{"name": ..., "arguments": {...}}</tool_call> or <answer>...</answer>'
# the longest text accepted inside <tool_call> or <answer>
MAX_ACTION_CHARS = 400
# the largest magnitude a calculator result (or intermediate) may reach
MAX_MAGNITUDE = 10**15

_ACTION_RE = re.compile(r"\s*<(tool_call|answer)>(.*)</\1>\s*", re.DOTALL)
_TYPES = {"string": str, "number": (int, float), "integer": int}


class ToolError(Exception):
    """A tool failed in a way the agent should read (bad value, service fault): the message is
    the observation. ``kind`` names the fault for metrics ("tool", "http", "timeout", ...)."""

    def __init__(self, message: str, kind: str = "tool"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Action:
    """A parsed action. kind: "tool_call", "answer" or None (unreadable).

    name/arguments: the call (tool_call); text: the answer's text; error: the error observation
    of a malformed action (None when well-formed).
    """

    kind: str | None
    name: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    error: str | None = None


def parse_action(text: str) -> Action:
    """Parse one action; never raises."""
    m = _ACTION_RE.fullmatch(text)
    if m is None or "<tool_call>" in m.group(2) or "<answer>" in m.group(2):
        return Action(None, error=ERR_FORMAT)
    kind, body = m.group(1), m.group(2)
    if len(body) > MAX_ACTION_CHARS:
        return Action(kind, error=f"error: {kind} longer than {MAX_ACTION_CHARS} characters")
    if kind == "answer":
        answer = body.strip()
        if not answer:
            return Action("answer", error="error: empty answer")
        return Action("answer", text=answer)
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return Action("tool_call", error=f"error: tool_call is not valid JSON ({exc.msg})")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return Action("tool_call", error='error: tool_call needs a JSON object with a "name"')
    args = call.get("arguments", {})
    if isinstance(args, str):  # OpenAI-style arguments serialised as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = None
    if not isinstance(args, dict):
        return Action("tool_call", call["name"], error='error: "arguments" must be a JSON object')
    extra = set(call) - {"name", "arguments"}
    if extra:
        return Action("tool_call", call["name"], error=f"error: unexpected keys {sorted(extra)}")
    return Action("tool_call", call["name"], args)


def tool_call(name: str, **arguments: Any) -> str:
    """The canonical (compact JSON) text of a tool call."""
    body = json.dumps({"name": name, "arguments": arguments}, separators=(",", ":"))
    return f"<tool_call>{body}</tool_call>"


def answer_action(answer: Any) -> str:
    """The canonical text of an answer."""
    return f"<answer>{answer}</answer>"


def tool_response(payload: dict[str, Any]) -> str:
    """The observation of a successful tool call."""
    return f"<tool_response>{json.dumps(payload, separators=(',', ':'))}</tool_response>"


@dataclass(frozen=True)
class ToolSpec:
    """A tool's name and its parameters: ``{name: "string" | "number" | "integer"}``, all
    required."""

    name: str
    params: dict[str, str]

    def check(self, arguments: dict[str, Any]) -> str | None:
        """The error observation for wrong arguments, or None when they fit."""
        for key, kind in self.params.items():
            if key not in arguments:
                return f"error: {self.name}: missing argument {key!r}"
            value = arguments[key]
            if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
                return f"error: {self.name}: argument {key!r} must be a {kind}"
        extra = sorted(set(arguments) - set(self.params))
        if extra:
            return f"error: {self.name}: unexpected argument {extra[0]!r}"
        return None


def unknown_tool(name: str, tools: dict[str, ToolSpec]) -> str:
    return f"error: unknown tool {name!r}; tools: {', '.join(tools)}"


CALCULATOR = ToolSpec("calc", {"expression": "string"})

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> int | float:
    """Evaluate arithmetic: numbers, + - * / //, unary minus, parentheses. Raises ToolError."""
    if len(expression) > MAX_ACTION_CHARS:
        raise ToolError("calc: expression too long")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ToolError(f"calc: cannot parse {expression!r}") from None
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return round(value, 6) if isinstance(value, float) else value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left), _eval(node.right)
        try:
            return _bounded(_BINOPS[type(node.op)](a, b))
        except ZeroDivisionError:
            raise ToolError("calc: division by zero") from None
    raise ToolError("calc: only numbers, + - * / // and parentheses are allowed")


def _bounded(x: int | float) -> int | float:
    if isinstance(x, float) and not math.isfinite(x) or abs(x) > MAX_MAGNITUDE:
        raise ToolError(f"calc: result beyond {MAX_MAGNITUDE:.0e}")
    return x


def format_number(x: int | float) -> str:
    """A number as an answer would write it: integers without a decimal point."""
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x)


def mistype(n: int, rng: random.Random) -> int:
    """``n`` with one digit replaced by a different one (no new leading zero)."""
    digits = str(abs(n))
    pos = rng.randrange(len(digits))
    banned = {digits[pos]} | ({"0"} if pos == 0 and len(digits) > 1 else set())
    new = rng.choice([d for d in "0123456789" if d not in banned])
    out = int(digits[:pos] + new + digits[pos + 1 :])
    return -out if n < 0 else out
