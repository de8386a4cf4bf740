"""Evaluation suites and their episodes, run exactly as training runs them.

A suite is an env config (``conf/env/*.yaml``); its tasks are the first ``num_tasks`` of a split.
Episodes go through the training loop's own ``EpisodeRunner`` + ``HFEngine`` + ``ChatFormat``,
batched, and are scored with the configured reward. Sampling uses one generator seeded with
``seed`` per (candidate, suite), so every checkpoint sees the same random stream and a rerun gives
the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from agentrl.evaluation.sources import EvalError
from agentrl.rewards.base import score_batch
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.engine import HFEngine
from agentrl.rollout.runner import EpisodeRunner
from agentrl.types import Task, Trajectory
from agentrl.utils.instantiate import ConfigError, instantiate


@dataclass
class Decoding:
    """How episodes are sampled and laid out (see conf/evaluate.yaml)."""

    greedy: bool
    temperature: float
    top_p: float
    episodes_per_task: int
    batch_size: int
    seed: int

    def check(self) -> None:
        if self.episodes_per_task < 1:
            raise EvalError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if self.greedy and self.episodes_per_task > 1:
            raise EvalError(
                f"greedy decoding gives the same episode {self.episodes_per_task} times; set "
                "greedy=false to sample several episodes per task (pass@k)"
            )
        if not self.temperature > 0:
            raise EvalError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EvalError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise EvalError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Suite:
    name: str
    env: object
    tasks: list[Task]


def build_suites(suites_cfg: DictConfig, split: str, num_tasks: int | None) -> list[Suite]:
    """Instantiate every suite and take its tasks; a bad env config or split is an EvalError."""
    if not suites_cfg:
        raise EvalError("no evaluation suites: add one, e.g. +env@suites.toolcalc=toolcalc")
    if num_tasks is not None and num_tasks < 1:
        raise EvalError(f"num_tasks must be >= 1 (or null for the whole split), got {num_tasks}")
    out = []
    for name, node in suites_cfg.items():
        if node is None:
            continue
        try:
            env = instantiate(node, f"suites.{name}")
            tasks = env.tasks(split)
        except ConfigError as exc:
            raise EvalError(str(exc)) from exc
        except ValueError as exc:
            raise EvalError(f"suite {name}: {exc}") from exc
        if not tasks:
            raise EvalError(f"suite {name} has no {split} tasks")
        out.append(Suite(str(name), env, tasks[:num_tasks] if num_tasks else tasks))
    if not out:
        raise EvalError("every suite is null; nothing to evaluate")
    return out


def _unknown_ids(tokenizer, ids: list[int]) -> int:
    unk = tokenizer.unk_token_id
    return sum(1 for i in ids if unk is not None and i == unk)


def _texts(suite: Suite) -> list[tuple[str, str]]:
    env = suite.env
    texts = [("system prompt", env.system_prompt or "")]
    texts += [(f"stop string {s!r}", s) for s in env.stop_strings]
    return texts + [(f"task {t.id}", t.prompt) for t in suite.tasks]


def check_tokenizer(label: str, tokenizer, model, suite: Suite, layout: dict) -> None:
    """The suite's text must survive the model's tokenizer and its prompts must fit.

    Fails when a prompt (or the system prompt, or a stop string) encodes to unknown tokens, does
    not decode back to the same text (whitespace aside), uses ids past the model's embedding, or
    leaves no room for one action within ``max_seq_len``.
    """
    vocab = model.get_input_embeddings().num_embeddings
    for what, text in _texts(suite):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids, skip_special_tokens=False)
        unknown = _unknown_ids(tokenizer, ids)
        if unknown or back.split() != text.split():
            why = f"{unknown} unknown tokens" if unknown else "it does not decode back"
            raise EvalError(
                f"suite {suite.name} does not fit the tokenizer of {label}: its {what} "
                f"{text[:60]!r} comes back as {back[:60]!r} ({why}); "
                "use a model whose tokenizer covers this env's text"
            )
        if ids and max(ids) >= vocab:
            raise EvalError(
                f"the tokenizer of {label} gives id {max(ids)} for the {what} of suite "
                f"{suite.name} but the model has only {vocab} embeddings"
            )
    chat = make_chat(tokenizer, layout["observation_role"], label)
    room = layout["max_seq_len"] - suite.env.max_action_tokens
    for task in suite.tasks:
        n = len(chat.prompt_ids(suite.env.system_prompt, task.prompt))
        if n > room:
            raise EvalError(
                f"task {task.id} of suite {suite.name} has a {n}-token prompt; with "
                f"{suite.env.max_action_tokens} action tokens it does not fit max_seq_len="
                f"{layout['max_seq_len']} ({label})"
            )


def training_overlap(suite: Suite, suite_cfg: DictConfig, run_env_cfg: DictConfig | None) -> int:
    """How many of the suite's tasks are in the training split of a run's env (same env class,
    same prompt): scores on those are not held out. 0 when the envs differ."""
    if run_env_cfg is None or run_env_cfg.get("_target_") != suite_cfg.get("_target_"):
        return 0
    try:
        train = {t.prompt for t in instantiate(run_env_cfg, "env").tasks("train")}
    except (ConfigError, ValueError):
        return 0
    return sum(t.prompt in train for t in suite.tasks)


def env_mismatch(suites_cfg: DictConfig, run_env_cfg: DictConfig | None, run_dir: str) -> str:
    """A sentence when a run trained on an env that no suite is (by ``_target_``), e.g. a webnav
    run evaluated on the default toolcalc suite; "" otherwise."""
    target = run_env_cfg.get("_target_") if run_env_cfg is not None else None
    targets = {node.get("_target_") for node in suites_cfg.values() if node is not None}
    if target is None or target in targets:
        return ""
    return (
        f"the run {run_dir} trained on {target}, which no suite evaluates (suites: "
        f"{', '.join(map(str, suites_cfg))}); run_env=true (or no suite settings on the command "
        "line) evaluates the run's own env with its settings"
    )


def make_chat(tokenizer, role: str, label: str) -> ChatFormat:
    try:
        return ChatFormat(tokenizer, role)
    except ValueError as exc:
        raise EvalError(f"the tokenizer of {label} cannot run episodes: {exc}") from exc


def run_suite(
    model, tokenizer, suite: Suite, reward, decoding: Decoding, layout: dict
) -> list[Trajectory]:
    """``episodes_per_task`` episodes of every task (task-major order), scored."""
    engine = HFEngine(micro_batch_size=decoding.batch_size)
    engine.bind(model, tokenizer)
    chat = make_chat(tokenizer, layout["observation_role"], suite.name)
    runner = EpisodeRunner(engine, chat, suite.env, layout["max_seq_len"])
    params = runner.sampling(decoding.temperature, decoding.top_p, decoding.greedy)
    n = decoding.episodes_per_task
    tasks = [t for t in suite.tasks for _ in range(n)]
    groups = [i for i in range(len(suite.tasks)) for _ in range(n)]
    # on the model's device: sampling draws from probabilities that live there
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(decoding.seed)
    trajs: list[Trajectory] = []
    size = decoding.batch_size
    with torch.no_grad():
        for start in range(0, len(tasks), size):
            batch = slice(start, start + size)
            trajs += runner.run(tasks[batch], groups[batch], params, generator)
    score_batch(reward, trajs)
    return trajs
