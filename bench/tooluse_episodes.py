"""What a tooluse policy does on the price questions of the test split, per policy (the baseline,
each checkpoint), from ``evaluate.py``'s trajectories.jsonl:

    python bench/tooluse_episodes.py outputs/<run>/eval/trajectories.jsonl

Columns (episodes, out of the family's or all of them):
    value / cost solved     "What are all rivets in stock worth?" / "What do 6 screws cost?"
    stock looked up         value questions with a ``lookup`` of the stock (it is needed)
    squared                 a ``calc`` of a number times itself (``calc(18*18)`` for 6 screws at 18)
    quantity used           cost questions whose ``calc`` has the asked quantity as an operand
    invalid call            a call the env rejected (unknown tool, wrong or missing arguments,
                            malformed JSON): ``info["invalid"]``
    lookup without field    a ``lookup`` call with no ``field`` argument
    tool errors             the price API's own faults (HTTP 500, timeout) met on the way
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

from agentrl.envs.toolcalls import parse_action

VALUE = re.compile(r"What are all \w+ in stock worth")
COST = re.compile(r"What do (\d+) \w+ cost")
SQUARE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*\*\s*\1\s*")
COLUMNS = (
    "value solved",
    "cost solved",
    "stock looked up",
    "squared",
    "quantity used",
    "invalid call",
    "lookup without field",
    "tool errors",
)


def episode_marks(record: dict) -> tuple[str | None, set[str]]:
    """The record's family (value, cost or None) and the columns it counts in."""
    prompt = record["prompt"]
    cost = COST.search(prompt)
    family = "value" if VALUE.search(prompt) else "cost" if cost else None
    marks = set()
    if record["success"] and family:
        marks.add(f"{family} solved")
    for turn in record["turns"]:
        info = turn.get("info") or {}
        if info.get("invalid"):
            marks.add("invalid call")
        if info.get("tool_error"):
            marks.add("tool errors")
        act = parse_action(turn["action"])
        if act.kind != "tool_call" or act.error:
            continue
        args = act.arguments
        if act.name == "lookup":
            if "field" not in args:
                marks.add("lookup without field")
            elif args.get("field") == "stock" and family == "value":
                marks.add("stock looked up")
        if act.name == "calc":
            expr = str(args.get("expression", ""))
            if SQUARE.fullmatch(expr):
                marks.add("squared")
            if cost and cost.group(1) in re.findall(r"\d+(?:\.\d+)?", expr):
                marks.add("quantity used")
    return family, marks


def summarize(records: list[dict]) -> dict[str, dict]:
    """Per policy label: episodes, per family, and the count of each column."""
    out: dict[str, dict] = {}
    for rec in records:
        row = out.setdefault(
            rec["label"],
            {"rl_step": rec.get("rl_step"), "episodes": 0, "family": defaultdict(int)}
            | {c: 0 for c in COLUMNS},
        )
        family, marks = episode_marks(rec)
        row["episodes"] += 1
        if family:
            row["family"][family] += 1
        for c in marks:
            row[c] += 1
    return out


def table(summary: dict[str, dict]) -> str:
    # the episodes each column counts out of: its family's, or all of them
    out_of = {"value solved": "value", "stock looked up": "value", "cost solved": "cost"}
    out_of["quantity used"] = "cost"
    lines = ["| policy | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label, row in summary.items():
        cells = [
            f"{row[c]}/{row['family'][out_of[c]] if c in out_of else row['episodes']}"
            for c in COLUMNS
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trajectories")
    args = ap.parse_args()
    with open(args.trajectories) as f:
        records = [json.loads(line) for line in f if line.strip()]
    summary = summarize(records)
    summary = dict(sorted(summary.items(), key=lambda kv: kv[1]["rl_step"] or 0))
    print(table(summary))


if __name__ == "__main__":
    main()
