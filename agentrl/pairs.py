"""Preference pairs over multi-turn episodes: the data of DPO and of learned rewards.

A pair is a task plus two action sequences, the chosen one preferred to the rejected one::

    PreferencePair(task, chosen=["<calc>3*4</calc>", "<answer>12</answer>"],
                   rejected=["<answer>13</answer>"], meta={"source": "env"})

Actions are text; ``pair_trajectories`` replays them through a fresh env with
``EpisodeRunner.demonstration``, so their tokens are laid out exactly as rollouts are (the env's
observations in between, loss mask 1 on the action tokens only). Pairs made from sampled rollouts
(``ranked_pairs``) keep the sampled trajectories themselves, so their tokens are never re-encoded.

Sources:
    load_pairs / save_pairs   JSONL, one pair a line; the schema is in docs/preferences.md
    env_pairs                 chosen = a verified-successful oracle demonstration, rejected = a
                              perturbed copy of it that the env's verifier marks failed
    ranked_pairs              from groups of scored rollouts: the best vs the worst, ties skipped
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.types import Task, Trajectory

# generic edits of a demonstration (any env whose actions are text): see ``perturb``
PERTURBATIONS = ("change_number", "change_final", "drop_step", "shortcut")
_PAIR_KEYS = {"task", "chosen", "rejected", "meta"}
_TASK_KEYS = {"id", "prompt", "answer", "meta"}
_NUMBER = re.compile(r"-?\d+")


class PairFormatError(ValueError):
    """A line of a pairs file that does not follow the schema; the message names the line."""


@dataclass
class PreferencePair:
    """task: the task both episodes solve. chosen, rejected: the agent's actions, in order
    (non-empty lists of text). meta: anything else (source, rewards, the perturbation applied).
    trajectories: (chosen, rejected) token-exact episodes when the pair was made from rollouts
    (not saved to JSONL; replayed from the actions when absent)."""

    task: Task
    chosen: list[str]
    rejected: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    trajectories: tuple[Trajectory, Trajectory] | None = field(
        default=None, repr=False, compare=False
    )

    def to_record(self) -> dict[str, Any]:
        t = self.task
        task = {"id": t.id, "prompt": t.prompt, "answer": t.answer, "meta": t.meta}
        return {"task": task, "chosen": self.chosen, "rejected": self.rejected, "meta": self.meta}


# --------------------------------------------------------------------------- JSONL


def save_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> int:
    """Write ``pairs`` as JSONL (one ``to_record()`` a line). Returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.to_record(), sort_keys=True) + "\n")
            n += 1
    return n


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """Read a JSONL pairs file; blank lines are skipped. Raises ``PairFormatError`` naming
    ``path:line`` and the problem for the first line that does not follow the schema, and
    ``FileNotFoundError`` (one line) when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    pairs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                pairs.append(parse_pair(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise PairFormatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            except PairFormatError as exc:
                raise PairFormatError(f"{path}:{lineno}: {exc}") from None
    if not pairs:
        raise PairFormatError(f"{path}: no pairs (the file is empty)")
    return pairs


def parse_pair(record: Any) -> PreferencePair:
    """One decoded JSONL line -> a pair; ``PairFormatError`` says what is wrong with it."""
    if not isinstance(record, dict):
        raise PairFormatError(f"expected a JSON object, got {type(record).__name__}")
    unknown = set(record) - _PAIR_KEYS
    if unknown:
        raise PairFormatError(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_PAIR_KEYS)}")
    for key in ("task", "chosen", "rejected"):
        if key not in record:
            raise PairFormatError(f"missing key {key!r}")
    chosen = _actions(record["chosen"], "chosen")
    rejected = _actions(record["rejected"], "rejected")
    if chosen == rejected:
        raise PairFormatError("chosen and rejected are the same actions")
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        raise PairFormatError(f"meta must be an object, got {type(meta).__name__}")
    return PreferencePair(_task(record["task"]), chosen, rejected, meta)


def _actions(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise PairFormatError(f"{key} must be a non-empty list of action strings")
    for i, a in enumerate(value):
        if not isinstance(a, str):
            raise PairFormatError(f"{key}[{i}] must be a string, got {type(a).__name__}")
    return list(value)


def _task(value: Any) -> Task:
    if not isinstance(value, dict):
        raise PairFormatError("task must be an object with id and prompt")
    unknown = set(value) - _TASK_KEYS
    if unknown:
        raise PairFormatError(
            f"task: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TASK_KEYS)}"
        )
    for key in ("id", "prompt"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise PairFormatError(f"task.{key} must be a non-empty string")
    meta = value.get("meta", {})
    if not isinstance(meta, dict):
        raise PairFormatError("task.meta must be an object")
    return Task(id=value["id"], prompt=value["prompt"], answer=value.get("answer"), meta=meta)


# --------------------------------------------------------------------------- env pairs


def perturb(actions: list[str], kind: str, rng: random.Random) -> list[str] | None:
    """A copy of ``actions`` with one generic edit, or None when ``kind`` does not apply:

    change_number  one integer in a non-final action replaced (the error then propagates)
    change_final   one integer in the final action replaced (e.g. a wrong final answer)
    drop_step      one non-final action removed
    shortcut       only the final action kept, one of its integers replaced (answering at once)
    """
    if kind == "change_number":
        spots = [i for i, a in enumerate(actions[:-1]) if _NUMBER.search(a)]
        if not spots:
            return None
        i = rng.choice(spots)
        return actions[:i] + [_change_number(actions[i], rng)] + actions[i + 1 :]
    if kind == "change_final":
        if not _NUMBER.search(actions[-1]):
            return None
        return actions[:-1] + [_change_number(actions[-1], rng)]
    if kind == "drop_step":
        if len(actions) < 2:
            return None
        i = rng.randrange(len(actions) - 1)
        return actions[:i] + actions[i + 1 :]
    if kind == "shortcut":
        if len(actions) < 2 or not _NUMBER.search(actions[-1]):
            return None
        return [_change_number(actions[-1], rng)]
    raise ValueError(f"unknown perturbation {kind!r}; choose from {PERTURBATIONS}")


def _change_number(text: str, rng: random.Random) -> str:
    """``text`` with one of its integers moved by a nonzero offset in [-9, 9] (never to '-0')."""
    matches = list(_NUMBER.finditer(text))
    m = rng.choice(matches)
    value = int(m.group())
    new = value + rng.choice([d for d in range(-9, 10) if d != 0])
    return text[: m.start()] + str(new) + text[m.end() :]


def env_pairs(
    suite,
    runner,
    tasks: list[Task],
    rng: random.Random,
    perturbations: Iterable[str] = PERTURBATIONS,
    max_tries: int = 8,
) -> tuple[list[PreferencePair], dict[str, int]]:
    """Pairs for ``tasks`` from any env suite with an oracle and a verifier.

    chosen: an oracle demonstration whose replay the verifier accepts (the oracle is drawn up to
    ``max_tries`` times: demonstrators may be imperfect). rejected: that demonstration with one
    generic edit (``perturb``, kinds tried in a random order, each up to ``max_tries`` draws)
    whose replay the verifier rejects. Both are replayed through the env with ``runner`` (an
    ``EpisodeRunner``); the trajectories are kept in ``pair.trajectories``. A task for which no
    such pair is found is skipped and counted. Returns (pairs, counts): ``no_chosen``,
    ``no_rejected`` (tasks skipped) and ``replays`` (episodes replayed).
    """
    kinds = list(perturbations)
    for kind in kinds:
        if kind not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {kind!r}; choose from {PERTURBATIONS}")
    counts = {"no_chosen": 0, "no_rejected": 0, "replays": 0}
    pairs = []
    for task in tasks:
        chosen = _verified_demo(suite, runner, task, rng, max_tries, counts)
        if chosen is None:
            counts["no_chosen"] += 1
            continue
        rejected = _failed_perturbation(runner, task, chosen, kinds, rng, max_tries, counts)
        if rejected is None:
            counts["no_rejected"] += 1
            continue
        (good, good_traj), (kind, bad, bad_traj) = chosen, rejected
        meta = {"source": "env", "perturbation": kind}
        pairs.append(PreferencePair(task, good, bad, meta, (good_traj, bad_traj)))
    return pairs, counts


def _replay(runner, task: Task, actions: list[str], counts: dict) -> Trajectory | None:
    counts["replays"] += 1
    try:
        traj = runner.demonstration(task, actions)
    except Exception:  # an env that cannot even reset this task: no pair for it
        return None
    return None if traj.status == "failed" else traj


def _verified_demo(suite, runner, task, rng, max_tries, counts):
    for _ in range(max_tries):
        actions = list(suite.oracle(task, rng))
        if not actions:
            continue
        traj = _replay(runner, task, actions, counts)
        if traj is not None and traj.success:
            return actions, traj
    return None


def _failed_perturbation(runner, task, chosen, kinds, rng, max_tries, counts):
    actions = chosen[0]
    for kind in rng.sample(kinds, len(kinds)):
        for _ in range(max_tries):
            edited = perturb(actions, kind, rng)
            if edited is None:
                break
            if edited == actions:
                continue
            traj = _replay(runner, task, edited, counts)
            if traj is not None and traj.success is False:
                return kind, edited, traj
    return None


# --------------------------------------------------------------------------- ranked pairs


def ranked_pairs(
    trajectories: list[Trajectory],
    score: Callable[[Trajectory], float] = lambda t: t.reward,
) -> tuple[list[PreferencePair], int]:
    """From scored rollouts (several per task, grouped by ``Trajectory.group``): one pair per
    group, the highest-scoring episode chosen and the lowest rejected (the first of equals, in
    input order). Groups whose scores are all equal are skipped. Failed episodes are left out.
    Returns (pairs, number of groups skipped as ties, single-episode groups included)."""
    groups: dict[int, list[Trajectory]] = {}
    for t in trajectories:
        if t.status != "failed":
            groups.setdefault(t.group, []).append(t)
    pairs, ties = [], 0
    for _, members in sorted(groups.items()):
        scores = [float(score(t)) for t in members]
        hi, lo = max(scores), min(scores)
        if hi == lo:
            ties += 1
            continue
        best, worst = members[scores.index(hi)], members[scores.index(lo)]
        meta = {"source": "ranked", "chosen_score": hi, "rejected_score": lo}
        pairs.append(
            PreferencePair(
                best.task,
                [x.action for x in best.turns],
                [x.action for x in worst.turns],
                meta,
                (best, worst),
            )
        )
    return pairs, ties


def pair_trajectories(runner, pair: PreferencePair) -> tuple[Trajectory, Trajectory]:
    """The (chosen, rejected) token-exact episodes of ``pair``: its own trajectories when it has
    them, else its actions replayed through a fresh env by ``runner.demonstration``."""
    if pair.trajectories is not None:
        return pair.trajectories
    return runner.demonstration(pair.task, pair.chosen), runner.demonstration(
        pair.task, pair.rejected
    )


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m agentrl.pairs --env conf/env/toolcalc.yaml --n 1000 --out pairs.jsonl``: env
    pairs for the first ``--n`` tasks of a split, written as JSONL (for ``algorithm.pairs=file``
    or a reward model). Only actions are written, so the tokenizer used to replay them (the tiny
    one) does not matter."""
    import argparse

    from omegaconf import OmegaConf

    from agentrl.models.tokenizer import load_tiny_tokenizer
    from agentrl.rollout.chat import ChatFormat
    from agentrl.rollout.runner import EpisodeRunner
    from agentrl.utils.instantiate import instantiate

    p = argparse.ArgumentParser(prog="python -m agentrl.pairs", description=main.__doc__)
    p.add_argument("--env", required=True, help="an env config, e.g. conf/env/toolcalc.yaml")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=1000, help="tasks (from the start of the split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    suite = instantiate(OmegaConf.load(args.env), "env")
    runner = EpisodeRunner(None, ChatFormat(load_tiny_tokenizer()), suite, max_seq_len=1 << 20)
    tasks = suite.tasks(args.split)[: args.n]
    pairs, counts = env_pairs(suite, runner, tasks, random.Random(args.seed))
    n = save_pairs(pairs, args.out)
    print(f"wrote {n} pairs for {len(tasks)} tasks to {args.out} (skipped: {counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
