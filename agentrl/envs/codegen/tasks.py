"""Task sources of the codegen env: a procedural family and the bundled problems.

A codegen task's ``meta`` holds: ``name`` (the function to define), ``args`` (its parameters),
``spec``, ``examples`` and ``tests`` (lists of ``[args list, expected value]``; the examples are
shown, every test is run), ``solution`` (a reference solution), ``source`` ("procedural" or
"bundled") and, for procedural tasks, ``steps`` and ``needs_parens``.

The procedural family: ``f(x)`` applies one or two integer steps in order, described in words,
e.g. "Write f(x): add 3, then multiply by 2." -> ``return (x+3)*2``. A two-step task whose first
step is + or - and whose second is *, // or % ``needs_parens``: written left to right without
parentheses the code is wrong (``x+3*2``), the systematic slip of the demonstrator.
"""

from __future__ import annotations

import random
from typing import Any

from agentrl.envs.base import SPLITS
from agentrl.envs.codegen.problems import PROBLEMS
from agentrl.types import Task

# op -> (the words of the spec, the smallest constant)
STEP_OPS = {
    "+": ("add {k}", 1),
    "-": ("subtract {k}", 1),
    "*": ("multiply by {k}", 2),
    "//": ("floor-divide by {k}", 2),
    "%": ("take the remainder mod {k}", 2),
}
# inputs of the hidden tests of a procedural task are drawn from this range
INPUT_RANGE = (0, 30)


def apply_step(x: int, op: str, k: int) -> int:
    if op == "+":
        return x + k
    if op == "-":
        return x - k
    if op == "*":
        return x * k
    if op == "//":
        return x // k
    return x % k


def program_code(steps: list[tuple[str, int]], parens: bool = True) -> str:
    """The one-line solution of ``steps``; ``parens=False`` writes it left to right (the slip)."""
    expr = "x"
    for i, (op, k) in enumerate(steps):
        wrap = parens and i > 0 and op in ("*", "//", "%") and steps[i - 1][0] in "+-"
        expr = f"({expr}){op}{k}" if wrap else f"{expr}{op}{k}"
    return f"def f(x):\n    return {expr}\n"


def needs_parens(steps: list[tuple[str, int]]) -> bool:
    return any(
        op in ("*", "//", "%") and steps[i - 1][0] in "+-" for i, (op, _) in enumerate(steps) if i
    )


def spec_text(steps: list[tuple[str, int]]) -> str:
    words = [STEP_OPS[op][0].format(k=k) for op, k in steps]
    return ", then ".join(words)


def procedural_tasks(
    seed: int,
    sizes: dict[str, int],
    max_steps: int,
    max_constant: int,
    num_tests: int,
    num_examples: int,
) -> dict[str, list[Task]]:
    """Distinct programs of 1..max_steps steps, split by program (deterministic from ``seed``)."""
    rng = random.Random(seed)
    total = sum(sizes.values())
    per_step = sum(max_constant - low + 1 for _, low in STEP_OPS.values())
    possible = sum(per_step**n for n in range(1, max_steps + 1))
    if total > possible:
        raise ValueError(
            f"{total} procedural tasks asked for, but max_steps={max_steps} and "
            f"max_constant={max_constant} allow only {possible} distinct programs: lower "
            "num_train/num_val/num_test or raise max_steps/max_constant"
        )
    seen: dict[tuple, None] = {}
    for _ in range(50 * total + 1000):
        if len(seen) == total:
            break
        n = rng.randint(1, max_steps)
        steps = []
        for _ in range(n):
            op = rng.choice(list(STEP_OPS))
            steps.append((op, rng.randint(STEP_OPS[op][1], max_constant)))
        seen.setdefault(tuple(steps), None)
    if len(seen) < total:
        raise ValueError(
            f"only {len(seen)} distinct programs found for {total} procedural tasks; lower "
            "num_train/num_val/num_test or raise max_steps/max_constant"
        )
    programs = list(seen)
    out, start = {}, 0
    for split in ("test", "val", "train"):
        chunk = programs[start : start + sizes[split]]
        out[split] = [
            _procedural_task(split, i, list(p), rng, num_tests, num_examples)
            for i, p in enumerate(chunk)
        ]
        start += sizes[split]
    return {s: out[s] for s in SPLITS}


def _procedural_task(
    split: str,
    i: int,
    steps: list[tuple[str, int]],
    rng: random.Random,
    num_tests: int,
    num_examples: int,
) -> Task:
    xs = rng.sample(range(INPUT_RANGE[0], INPUT_RANGE[1] + 1), num_tests)
    tests = []
    for x in xs:
        y = x
        for op, k in steps:
            y = apply_step(y, op, k)
        tests.append([[x], y])
    meta = {
        "name": "f",
        "args": "x",
        "spec": spec_text(steps),
        "examples": tests[:num_examples],
        "tests": tests,
        "solution": program_code(steps),
        "source": "procedural",
        "steps": [list(s) for s in steps],
        "needs_parens": needs_parens(steps),
    }
    return Task(id=f"codegen/procedural/{split}/{i}", prompt=render_prompt(meta), meta=meta)


def bundled_tasks(seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[Task]]:
    """The bundled problems, shuffled by ``seed`` and cut into train/val/test."""
    order = list(range(len(PROBLEMS)))
    random.Random(seed).shuffle(order)
    n_test = round(test_fraction * len(order))
    n_val = round(val_fraction * len(order))
    cuts = {"test": order[:n_test], "val": order[n_test : n_test + n_val]}
    cuts["train"] = order[n_test + n_val :]
    return {s: [_bundled_task(s, PROBLEMS[j]) for j in sorted(cuts[s])] for s in SPLITS}


def _bundled_task(split: str, p: dict[str, Any]) -> Task:
    tests = [[list(args), expected] for args, expected in p["tests"]]
    meta = {
        "name": p["name"],
        "args": p["args"],
        "spec": p["spec"],
        "examples": tests[:2],
        "tests": tests,
        "solution": p["solution"],
        "source": "bundled",
        "needs_parens": False,
    }
    return Task(id=f"codegen/bundled/{split}/{p['name']}", prompt=render_prompt(meta), meta=meta)


def call_text(name: str, args: list) -> str:
    return f"{name}({', '.join(repr(a) for a in args)})"


def render_prompt(meta: dict[str, Any]) -> str:
    lines = [f"Write {meta['name']}({meta['args']}): {meta['spec']}"]
    for args, expected in meta["examples"]:
        lines.append(f"{call_text(meta['name'], args)} == {expected!r}")
    return "\n".join(lines)
