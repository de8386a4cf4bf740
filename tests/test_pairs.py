"""Preference pairs: JSONL schema and errors, env pairs verified by replay, reward-ranked pairs."""

import json
import random

import pytest

from agentrl.envs.toolcalc import ToolCalc
from agentrl.models.tokenizer import load_tiny_tokenizer
from agentrl.pairs import (
    PERTURBATIONS,
    PairFormatError,
    PreferencePair,
    env_pairs,
    load_pairs,
    pair_trajectories,
    perturb,
    ranked_pairs,
    save_pairs,
)
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.runner import EpisodeRunner
from agentrl.types import Task, Trajectory, Turn


@pytest.fixture(scope="module")
def runner():
    chat = ChatFormat(load_tiny_tokenizer())
    suite = ToolCalc(num_train=60, num_val=10, num_test=10, guess_prob=0.75, mistake_prob=0.05)
    return EpisodeRunner(None, chat, suite, max_seq_len=512)


TASK = Task(id="t/1", prompt="Compute 2+3*4", answer=14, meta={"steps": []})


def test_save_load_round_trip(tmp_path):
    pairs = [
        PreferencePair(TASK, ["<calc>3*4</calc>", "<answer>14</answer>"], ["<answer>20</answer>"]),
        PreferencePair(TASK, ["<answer>14</answer>"], ["<answer>15</answer>"], {"why": "typo"}),
    ]
    path = tmp_path / "sub" / "pairs.jsonl"
    assert save_pairs(pairs, path) == 2
    back = load_pairs(path)
    assert back == pairs
    assert back[1].meta == {"why": "typo"} and back[0].task.answer == 14


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"task": {"id": "a", "prompt": "p"}, "chosen": ["x"]}', "missing key 'rejected'"),
        ('{"task": {"id": "a", "prompt": "p"}, "chosen": [], "rejected": ["y"]}', "chosen must"),
        ('{"task": {"id": "a", "prompt": "p"}, "chosen": ["x"], "rejected": [3]}', "rejected[0]"),
        ('{"task": {"id": "a", "prompt": "p"}, "chosen": ["x"], "rejected": ["x"]}', "the same"),
        ('{"task": {"id": "a"}, "chosen": ["x"], "rejected": ["y"]}', "task.prompt"),
        ('{"task": {"id": "a", "prompt": "p"}, "chosen": ["x"], "rejected": ["y"], "z": 1}', "z"),
        ('{"task": "a", "chosen": ["x"], "rejected": ["y"]}', "task must be an object"),
        (
            '{"task": {"id": "a", "prompt": "p"}, "chosen": ["x"], "rejected": ["y"], "meta": 1}',
            "meta",
        ),
    ],
)
def test_bad_lines_name_the_line_number(tmp_path, line, message):
    good = json.dumps({"task": {"id": "a", "prompt": "p"}, "chosen": ["x"], "rejected": ["y"]})
    path = tmp_path / "pairs.jsonl"
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(PairFormatError) as info:
        load_pairs(path)
    assert f"{path}:3:" in str(info.value) and message in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PairFormatError, match="no pairs"):
        load_pairs(tmp_path / "empty.jsonl")


def test_perturbations():
    rng = random.Random(0)
    demo = ["<calc>2+3</calc>", "<calc>5*4</calc>", "<answer>20</answer>"]
    changed = perturb(demo, "change_number", rng)
    assert changed[-1] == demo[-1] and changed != demo and len(changed) == 3
    final = perturb(demo, "change_final", rng)
    assert final[:2] == demo[:2] and final[-1] != demo[-1]
    dropped = perturb(demo, "drop_step", rng)
    assert len(dropped) == 2 and dropped[-1] == demo[-1]
    short = perturb(demo, "shortcut", rng)
    assert len(short) == 1 and short[0].startswith("<answer>") and short[0] != demo[-1]
    # kinds that do not apply say so
    assert perturb(["<answer>7</answer>"], "drop_step", rng) is None
    assert perturb(["<answer>seven</answer>"], "change_final", rng) is None
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(demo, "swap", rng)


def test_env_pairs_are_verified_by_replay(runner):
    suite = runner.suite
    tasks = suite.tasks("train")[:20]
    pairs, counts = env_pairs(suite, runner, tasks, random.Random(0))
    assert len(pairs) + counts["no_chosen"] + counts["no_rejected"] == 20
    assert len(pairs) >= 18
    kinds = set()
    for pair in pairs:
        good, bad = pair.trajectories
        assert good.success is True and bad.success is False
        assert pair.chosen != pair.rejected
        kinds.add(pair.meta["perturbation"])
        # the kept trajectories are the demonstrations' own token layout
        again_good, again_bad = (
            runner.demonstration(pair.task, pair.chosen),
            runner.demonstration(pair.task, pair.rejected),
        )
        assert again_good.token_ids == good.token_ids and again_bad.token_ids == bad.token_ids
    assert kinds <= set(PERTURBATIONS) and len(kinds) >= 2
    # deterministic given the rng
    again, _ = env_pairs(suite, runner, tasks, random.Random(0))
    assert [(p.chosen, p.rejected) for p in again] == [(p.chosen, p.rejected) for p in pairs]


def test_env_pairs_skip_and_count_tasks_without_a_pair(runner):
    class NeverRight:
        """An oracle that always fails the verifier: no chosen demonstration exists."""

        def oracle(self, task, rng):
            return ["<answer>-1</answer>"]

    pairs, counts = env_pairs(
        NeverRight(), runner, runner.suite.tasks("train")[:3], random.Random(0), max_tries=2
    )
    assert pairs == [] and counts["no_chosen"] == 3 and counts["replays"] == 6
    # a demo that no generic edit can break (a non-numeric answer): counted as no_rejected
    suite = runner.suite
    task = Task(id="x", prompt="Compute 1+1", answer=2, meta={"steps": []})

    class Fixed:
        def oracle(self, task, rng):
            return ["<answer>2</answer>"]

    # change_final gives a wrong number: a pair is found
    pairs, counts = env_pairs(
        Fixed(), runner, [task], random.Random(0), perturbations=["drop_step"]
    )
    assert pairs == [] and counts["no_rejected"] == 1
    pairs, _ = env_pairs(Fixed(), runner, [task], random.Random(0), perturbations=["change_final"])
    assert len(pairs) == 1 and pairs[0].rejected != ["<answer>2</answer>"]
    with pytest.raises(ValueError, match="unknown perturbation"):
        env_pairs(suite, runner, [task], random.Random(0), perturbations=["nope"])


def _traj(group: int, reward: float, action: str, status: str = "ok") -> Trajectory:
    t = Trajectory(TASK, [1, 2, 3], [0, 1, 1], [0.0] * 3, 1, group=group, status=status)
    t.turns.append(Turn(action, "", reward, (1, 3)))
    t.reward = reward
    return t


def test_ranked_pairs_best_vs_worst_ties_skipped():
    trajs = [
        _traj(0, 0.5, "a"),
        _traj(0, 1.0, "b"),
        _traj(0, 0.0, "c"),
        _traj(0, 1.0, "d"),  # equal to the best: the first of equals wins
        _traj(1, 1.0, "e"),
        _traj(1, 1.0, "f"),  # all equal: a tie, skipped
        _traj(2, 0.0, "g"),
        _traj(2, 9.0, "h", status="failed"),  # failed episodes never enter a pair
        _traj(3, 0.2, "i"),
        _traj(3, 0.1, "j"),
    ]
    pairs, ties = ranked_pairs(trajs)
    assert ties == 2  # group 1 (all equal) and group 2 (one usable episode)
    assert [(p.chosen, p.rejected) for p in pairs] == [(["b"], ["c"]), (["i"], ["j"])]
    assert pairs[0].meta == {"source": "ranked", "chosen_score": 1.0, "rejected_score": 0.0}
    # the sampled trajectories themselves are kept (never re-tokenized)
    assert pair_trajectories(None, pairs[0]) == (trajs[1], trajs[2])
    # a custom score
    pairs, ties = ranked_pairs(trajs, score=lambda t: -t.reward)
    assert pairs[0].chosen == ["c"] and ties == 2


def test_pair_trajectories_replays_actions(runner):
    task = runner.suite.tasks("train")[0]
    demo = runner.suite.oracle(task, random.Random(1), mistake_prob=0.0)
    pair = PreferencePair(task, demo, ["<answer>-5</answer>"])
    good, bad = pair_trajectories(runner, pair)
    assert good.token_ids == runner.demonstration(task, demo).token_ids
    assert bad.success is False and len(bad.turns) == 1


def test_command_line_writes_loadable_pairs(tmp_path, capsys):
    from agentrl.pairs import main

    out = tmp_path / "pairs.jsonl"
    env = tmp_path / "env.yaml"
    env.write_text(
        "_target_: agentrl.envs.toolcalc.ToolCalc\nnum_train: 30\nnum_val: 5\nnum_test: 5\n"
    )
    assert main(["--env", str(env), "--n", "10", "--out", str(out)]) == 0
    pairs = load_pairs(out)
    assert 8 <= len(pairs) <= 10 and all(p.meta["source"] == "env" for p in pairs)
    assert f"wrote {len(pairs)} pairs for 10 tasks" in capsys.readouterr().out
