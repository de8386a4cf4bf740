"""reasoning_gym: the procedural task suites of the ``reasoning-gym`` package as an agentrl env.

``env=reasoning_gym env.dataset=<name>`` (any of the package's registered datasets, with
``env.config`` passed to its config class) takes the tasks from the package's own generator and
scores answers with the package's own ``score_answer``, so success rates are comparable with
other frameworks that train on it. Splits: each split is generated from its own seed derived from
``seed``; a question already in test (then val) is skipped in val (then train), so the splits
never share a question.

Multi-step: before answering, the agent may call the calculator, in the JSON function-calling
format of ``agentrl.envs.toolcalls``::

    <tool_call>{"name":"calc","arguments":{"expression":"5 - 3 - 6"}}</tool_call>
    <answer>-4</answer>

The answer's step reward is the package's score (partial credit included); ``verify`` is
``score >= success_threshold``. Oracle: the dataset's answer, preceded by a calculator call on the
task's expression where the dataset has one (``metadata["expression"]``, e.g. basic_arithmetic,
chain_sum) and the calculator reproduces the answer. Its deliberate flaw: with probability
``guess_prob`` it skips that call and answers a mistyped number.
"""

from __future__ import annotations

import random
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
from agentrl.envs.toolcalls import (
    CALCULATOR,
    Action,
    ToolError,
    answer_action,
    calculator,
    format_number,
    mistype,
    parse_action,
    tool_call,
    tool_response,
    unknown_tool,
)
from agentrl.types import Task

SYSTEM_PROMPT = (
    'You may call <tool_call>{"name":"calc","arguments":{"expression":..}}</tool_call>, '
    "then give <answer>..</answer>."
)
TOOLS = {"calc": CALCULATOR}
# a split draws from up to SEARCH_FACTOR * size + 1000 generated items (items are generated on
# access, and item i depends only on the split seed and i) before it gives up on duplicates
SEARCH_FACTOR = 10


class ReasoningGymEnv:
    """One episode: optional calculator calls, then an answer scored by the package."""

    def __init__(self, suite: ReasoningGym):
        self.suite = suite
        self.system_prompt = suite.system_prompt
        self.max_turns = suite.max_turns
        self.task: Task | None = None
        self.history: list[tuple[str, str, float]] = []
        self.done = self.truncated = False
        self.final_answer: str | None = None
        self.score = 0.0

    def reset(self, task: Task) -> str:
        self.task = task
        self.history = []
        self.done = self.truncated = False
        self.final_answer = None
        self.score = 0.0
        return task.prompt

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.task is None:
            raise RuntimeError("ReasoningGymEnv.step called before reset(task)")
        if self.done:
            return ERR_DONE, 0.0, True, self._info(None, error=ERR_DONE, invalid=True)
        obs, reward, info = self._apply(parse_action(action))
        return record_step(self, action, obs, reward, info)

    def _apply(self, act: Action) -> tuple[str, float, dict[str, Any]]:
        if act.error is not None:
            return act.error, 0.0, self._info(act.name, error=act.error, invalid=True)
        if act.kind == "answer":
            self.done = True
            self.final_answer = act.text
            self.score = self.suite.score(self.task, act.text)
            return "", self.score, self._info("answer", score=self.score)
        err = unknown_tool(act.name, self.suite.tools) if act.name not in self.suite.tools else None
        err = err or self.suite.tools[act.name].check(act.arguments)
        if err is not None:
            return err, 0.0, self._info(act.name, error=err, invalid=True)
        try:
            result = calculator(act.arguments["expression"])
        except ToolError as exc:
            return f"error: {exc}", 0.0, self._info(act.name, error=f"error: {exc}")
        return tool_response({"result": result}), 0.0, self._info(act.name)

    def _info(self, tool, error=None, invalid=False, **extra) -> dict[str, Any]:
        info = {"tool": tool, "invalid": invalid, "error": error, "turn": len(self.history)}
        info["truncated"] = self.truncated
        return {**info, **extra}

    def render(self) -> str:
        return render_episode(self, self._verdict)

    def _verdict(self) -> str:
        return (
            f"[answer {self.final_answer!r}: score {self.score:g}, expected {self.task.answer!r}]"
        )


class ReasoningGym:
    """The adapter suite.

    Args:
        dataset: a dataset name registered in reasoning_gym (e.g. basic_arithmetic, chain_sum).
        config: keyword arguments of the dataset's config class (e.g. max_terms, max_digits).
        seed: seed from which each split's generator seed is derived.
        num_train, num_val, num_test: split sizes (distinct questions across all splits).
        calculator: offer the calculator tool (false: the agent must answer at once).
        max_turns: turns per episode (calls, malformed actions and the answer all count).
        max_action_tokens: tokens the policy may generate in one turn.
        success_threshold: an episode succeeds when the package's score reaches this.
        guess_prob: probability that the demonstrator skips the calculator where it applies and
            answers a mistyped number (the oracle's deliberate flaw).
        system_prompt: the system message of every episode.
    """

    stop_strings = ["</tool_call>", "</answer>"]

    def __init__(
        self,
        dataset: str,
        config: dict[str, Any] | None = None,
        seed: int = 0,
        num_train: int = 5000,
        num_val: int = 200,
        num_test: int = 200,
        calculator: bool = True,
        max_turns: int = 4,
        max_action_tokens: int = 128,
        success_threshold: float = 1.0,
        guess_prob: float = 0.0,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        _check_args(locals())
        self.dataset = dataset
        self.name = f"reasoning_gym/{dataset}"
        self.config = _plain(config)
        self.seed = seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.tools = dict(TOOLS) if calculator else {}
        self.max_turns = max_turns
        self.max_action_tokens = max_action_tokens
        self.success_threshold = float(success_threshold)
        self.guess_prob = float(guess_prob)
        self.system_prompt = system_prompt
        self.stop_strings = list(type(self).stop_strings)
        self._datasets: dict[str, Any] = {}
        self._splits = self._generate()

    def tasks(self, split: str) -> list[Task]:
        return split_tasks(self._splits, split)

    def make(self) -> ReasoningGymEnv:
        return ReasoningGymEnv(self)

    def score(self, task: Task, answer: str | None) -> float:
        """The package's own score of ``answer`` (0.0 if its scorer fails on it)."""
        ds = self._datasets[task.meta["split"]]
        try:
            return float(ds.score_answer(answer, task.meta["entry"]))
        except Exception:  # a scorer crashing on a strange answer scores it 0
            return 0.0

    def verify(self, task: Task, env: ReasoningGymEnv) -> bool:
        if not getattr(env, "done", False) or env.final_answer is None:
            return False
        return self.score(task, env.final_answer) >= self.success_threshold

    def oracle(self, task: Task, rng: random.Random) -> list[str]:
        """The dataset's answer, after a calculator call on the expression where one applies."""
        answer = str(task.answer)
        expr = task_expression(self.dataset, task.meta["entry"])
        if not (self.tools and isinstance(expr, str) and _calc_matches(expr, answer)):
            return [answer_action(answer)]
        if rng.random() < self.guess_prob and _is_int(answer):
            return [answer_action(mistype(int(answer), rng))]
        return [tool_call("calc", expression=expr), answer_action(answer)]

    def _generate(self) -> dict[str, list[Task]]:
        import reasoning_gym

        seen: set[str] = set()
        splits: dict[str, list[Task]] = {}
        for split in ("test", "val", "train"):
            n = self.sizes[split]
            split_seed = random.Random(f"reasoning_gym/{self.seed}/{split}").randrange(2**31)
            try:
                ds = reasoning_gym.create_dataset(
                    self.dataset, seed=split_seed, size=SEARCH_FACTOR * n + 1000, **self.config
                )
            except (ValueError, TypeError, AssertionError) as exc:
                raise ValueError(f"reasoning_gym dataset {self.dataset!r}: {exc}") from None
            self._datasets[split] = ds
            tasks = []
            for i in range(len(ds)):
                entry = ds[i]
                if entry["question"] in seen:
                    continue
                seen.add(entry["question"])
                tasks.append(
                    Task(
                        id=f"{self.name}/{split}/{len(tasks)}",
                        prompt=entry["question"],
                        answer=entry["answer"],
                        meta={"split": split, "entry": entry},
                    )
                )
                if len(tasks) == n:
                    break
            if len(tasks) < n:
                raise ValueError(
                    f"reasoning_gym dataset {self.dataset!r} gave only {len(tasks)} distinct "
                    f"{split} questions for num_{split}={n}; lower the split sizes or widen env.config"
                )
            splits[split] = tasks
        return {s: splits[s] for s in SPLITS}


def task_expression(dataset: str, entry: dict[str, Any]) -> str | None:
    """The arithmetic a calculator call would take for this task, where one applies.

    The dataset's own ``metadata["expression"]`` (basic_arithmetic, chain_sum, products...), or
    one derived from its metadata: leg_counting's is ``count*legs`` per animal (``3*4 + 2*8``
    for 3 cats and 2 spiders), with the legs from the package's own table, so a demonstration
    spells out what the agent must know (how many legs each animal has) and the calculator does
    the arithmetic.
    """
    meta = entry.get("metadata", {})
    if isinstance(meta.get("expression"), str):
        return meta["expression"]
    if dataset == "leg_counting" and isinstance(meta.get("animals"), dict):
        from reasoning_gym.arithmetic.leg_counting import ANIMALS

        return " + ".join(f"{n}*{ANIMALS[animal]}" for animal, n in meta["animals"].items())
    return None


def _plain(config: Any) -> dict[str, Any]:
    """The dataset settings as plain Python (Hydra passes a DictConfig)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return dict(config or {})


def _calc_matches(expr: str, answer: str) -> bool:
    try:
        return format_number(calculator(expr)) == answer
    except ToolError:
        return False


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _check_args(args: dict[str, Any]) -> None:
    if not isinstance(args["dataset"], str) or not args["dataset"]:
        raise ValueError(f"dataset must name a reasoning_gym dataset, got {args['dataset']!r}")
    check_ints(args, ("num_train", "num_val", "num_test", "max_turns", "max_action_tokens"))
    check_probs(args, ("success_threshold", "guess_prob"))
    if args["config"] is not None and not hasattr(args["config"], "keys"):
        raise ValueError(
            f"config must be a mapping of the dataset's settings, got {args['config']!r}"
        )
