"""bench/tooluse_episodes.py counts what the README says about SmolLM2's tooluse episodes: solved
price questions per family, the stock lookup, a squared price, the quantity used, invalid calls."""

import json
import sys

from agentrl.envs.toolcalls import answer_action, tool_call
from tests.conftest import load_bench


def turn(action: str, observation: str = "", **info) -> dict:
    return {"action": action, "observation": observation, "reward": 0.0, "info": info}


def record(label, step, prompt, turns, success) -> dict:
    return {"label": label, "rl_step": step, "prompt": prompt, "turns": turns, "success": success}


VALUE = "What are all rivets in stock worth in USD?"
COST = "What do 6 screws cost in USD?"


def episodes() -> list[dict]:
    price = tool_call("price", item="screw")
    return [
        # baseline: a value question solved the right way
        record(
            "baseline",
            0,
            VALUE,
            [
                turn(tool_call("lookup", item="rivet", field="stock"), "40"),
                turn(tool_call("price", item="rivet"), "error: HTTP 500", tool_error="http_500"),
                turn(tool_call("price", item="rivet"), "3"),
                turn(tool_call("calc", expression="40*3"), "120"),
                turn(answer_action(120)),
            ],
            True,
        ),
        # baseline: the price squared, after a lookup without its field
        record(
            "baseline",
            0,
            COST,
            [
                turn(tool_call("lookup", item="screw"), "error: missing field", invalid=True),
                turn(price, "18"),
                turn(tool_call("calc", expression="18 * 18"), "324"),
                turn(answer_action(324)),
            ],
            False,
        ),
        # after RL: the quantity used
        record(
            "step20",
            20,
            COST,
            [
                turn(price, "18"),
                turn(tool_call("calc", expression="6*18"), "108"),
                turn("<answer>108</answer>"),
            ],
            True,
        ),
        # after RL: a value question without the stock lookup
        record("step20", 20, VALUE, [turn(tool_call("price", item="rivet"), "3")], False),
    ]


def test_counts_per_policy_and_family():
    bench = load_bench("tooluse_episodes")
    s = bench.summarize(episodes())
    base, end = s["baseline"], s["step20"]
    assert base["episodes"] == 2 and dict(base["family"]) == {"value": 1, "cost": 1}
    assert base["value solved"] == 1 and base["cost solved"] == 0
    assert base["stock looked up"] == 1 and base["squared"] == 1 and base["quantity used"] == 0
    assert base["invalid call"] == 1 and base["lookup without field"] == 1
    assert base["tool errors"] == 1
    assert end["cost solved"] == 1 and end["quantity used"] == 1 and end["squared"] == 0
    assert end["stock looked up"] == 0 and end["invalid call"] == 0


def test_table_counts_out_of_the_family(tmp_path, capsys):
    bench = load_bench("tooluse_episodes")
    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reversed(episodes())))
    argv, sys.argv = sys.argv, ["tooluse_episodes.py", str(path)]
    try:
        bench.main()
    finally:
        sys.argv = argv
    lines = capsys.readouterr().out.splitlines()
    # the baseline first whatever the file's order; value/cost columns out of their family
    assert lines[2] == "| baseline | 1/1 | 0/1 | 1/1 | 1/2 | 0/1 | 1/2 | 1/2 | 1/2 |"
    assert lines[3] == "| step20 | 0/1 | 1/1 | 0/1 | 0/2 | 1/1 | 0/2 | 0/2 | 0/2 |"
