"""What a toolcalc policy does on each test task, from ``evaluate.py``'s trajectories.jsonl:
how often each policy (baseline, each checkpoint) succeeds and how the others fail.

    python bench/toolcalc_episodes.py outputs/<run>/eval/trajectories.jsonl \\
        --max-ops 3 --no-left-to-right          # the suite's settings, to recompute each task

Each failed episode gets the first thing that went wrong, in the order the episode ran:
``malformed`` (an action the env rejected), ``wrong call`` (a calculator call that is not the
next step of the expression: wrong operands, wrong order or a mis-copied result),
``early answer`` (answered before all the steps were computed), ``wrong answer`` (every step
computed, the answer is not the last result), ``turn cap`` (no answer before the turn limit).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict

from agentrl.envs.toolcalc import ToolCalc

CALC = re.compile(r"\s*<calc>\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*</calc>\s*")
ANSWER = re.compile(r"\s*<answer>\s*(-?\d+)\s*</answer>\s*")
KINDS = ("success", "malformed", "wrong call", "early answer", "wrong answer", "turn cap")


def classify(record: dict, steps: list[dict]) -> str:
    if record["success"]:
        return "success"
    done = 0
    for turn in record["turns"]:
        action = turn["action"]
        if turn.get("observation", "").startswith("error:"):
            return "malformed"
        m = CALC.fullmatch(action)
        if m:
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            want = steps[done] if done < len(steps) else None
            if want is not None and (a, op, b) == (want["a"], want["op"], want["b"]):
                done += 1
                continue
            if done > 0 and (a, op, b) == tuple(steps[done - 1][k] for k in ("a", "op", "b")):
                continue  # the same call again: harmless, costs a turn
            return "wrong call"
        if ANSWER.fullmatch(action):
            return "early answer" if done < len(steps) else "wrong answer"
        return "malformed"
    return "turn cap"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trajectories")
    ap.add_argument("--max-ops", type=int, default=3)
    ap.add_argument("--left-to-right", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--max-operand", type=int, default=20)
    args = ap.parse_args()
    suite = ToolCalc(
        max_ops=args.max_ops, left_to_right=args.left_to_right, max_operand=args.max_operand
    )
    steps = {
        t.id: t.meta["steps"] for split in ("train", "val", "test") for t in suite.tasks(split)
    }
    counts: dict[str, Counter] = defaultdict(Counter)
    by_ops: dict[str, Counter] = defaultdict(Counter)
    order: list[str] = []
    with open(args.trajectories) as f:
        for line in f:
            r = json.loads(line)
            label = r["label"]
            if label not in counts:
                order.append(label)
            kind = classify(r, steps[r["task_id"]])
            counts[label][kind] += 1
            n = len(steps[r["task_id"]])
            by_ops[label][(n, kind == "success")] += 1
    print("| policy | " + " | ".join(KINDS) + " | success by number of operations |")
    print("|---|" + "---|" * (len(KINDS) + 1))
    for label in order:
        c, total = counts[label], sum(counts[label].values())
        ops = sorted({n for n, _ in by_ops[label]})
        per_ops = ", ".join(
            f"{n} op: {by_ops[label][(n, True)]}/{by_ops[label][(n, True)] + by_ops[label][(n, False)]}"
            for n in ops
        )
        cells = " | ".join(f"{c[k]} ({100 * c[k] / total:.0f}%)" for k in KINDS)
        print(f"| {label} | {cells} | {per_ops} |")


if __name__ == "__main__":
    main()
