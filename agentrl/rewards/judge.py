"""``reward=judge``: an LLM scores episodes against a rubric.

The judge is a local Hugging Face causal LM (any model spec of ``conf/model``, e.g. the tiny
model or SmolLM2) or any OpenAI-compatible chat endpoint (``POST <url>/chat/completions``, the
key read from the environment variable named by ``auth_env``, never stored in the config).

Absolute scoring (default): one prompt per episode, the rubric then the transcript; the judge's
answer is parsed by ``parse_score`` (``Score: 7``, ``7/10``, ``{"score": 7}``, ``Rating: 7 out of
10``, ...) and mapped from ``[min_score, max_score]`` to ``[0, 1]``. Relative scoring
(``relative: true``): the episodes of one group (the samples of one task) go into one prompt as
candidates A, B, C, ... and the judge answers a line ``A: <score>`` per candidate
(``parse_group_scores``).

An answer that cannot be parsed is counted (``reward/judge_unparseable``), never fatal: the
episode gets ``unparseable_value`` (or, when that is null, fails and is dropped from the update).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

from agentrl.protocols import Reward
from agentrl.rewards.base import RewardOutput
from agentrl.types import Trajectory

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = (
    "You grade an AI agent's attempt at a task. The task and the agent's actions with the "
    "environment's replies follow. Judge whether the final answer is correct and whether the "
    "agent used its tools sensibly. Reply with one line: Score: N, where N is an integer from "
    "{min_score} (useless) to {max_score} (perfect)."
)
RELATIVE_RUBRIC = (
    "You compare several attempts (candidates {labels}) of an AI agent at the same task. Judge "
    "whether each final answer is correct and whether the tools were used sensibly. Reply with "
    "one line per candidate, e.g. 'A: N', N an integer from {min_score} (useless) to {max_score} "
    "(perfect)."
)
_NUM = r"[-+]?\d+(?:\.\d+)?"
# most to least specific; the first pattern that matches wins
_PATTERNS = [
    re.compile(
        rf"\b(?:score|rating|grade)\b[^\w+-]{{0,5}}(?:is[^\w+-]{{0,2}})?({_NUM})\s*(?:/|out of)\s*({_NUM})",
        re.I,
    ),
    re.compile(rf"\b(?:score|rating|grade)\b[^\w+-]{{0,5}}(?:is[^\w+-]{{0,2}})?({_NUM})", re.I),
    re.compile(rf"({_NUM})\s*(?:/|out of)\s*({_NUM})", re.I),
]


def parse_score(text: str, min_score: float = 0.0, max_score: float = 10.0) -> float | None:
    """The judge's score in ``text`` mapped to [0, 1], or None when there is none.

    Accepts a JSON object with ``score``, ``Score: 7`` / ``rating = 7`` / ``Grade: 7.5`` (the
    last such mention wins: judges often reason first), ``7/10`` or ``7 out of 10`` (rescaled
    from its own denominator), or a reply that is a bare number. Values outside the range, and
    NaN or infinite ones, are rejected.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    span = max_score - min_score
    value = _json_score(text)
    if value is None:
        for pattern in _PATTERNS:
            found = pattern.findall(text)
            if found:
                last = found[-1]
                if isinstance(last, tuple) and len(last) == 2:
                    num, den = float(last[0]), float(last[1])
                    if den <= 0:
                        return None
                    value = min_score + span * num / den
                    if num > den or num < 0:
                        return None
                else:
                    value = float(last[0] if isinstance(last, tuple) else last)
                break
    if value is None:
        bare = text.strip().rstrip(".").strip("*` ")
        if re.fullmatch(_NUM, bare):
            value = float(bare)
    if value is None or not math.isfinite(value) or not min_score <= value <= max_score:
        return None
    return (value - min_score) / span


def _json_score(text: str) -> float | None:
    for m in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(m.group())
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("score"), (int, float)):
            return float(obj["score"])
    return None


def parse_group_scores(
    text: str, labels: list[str], min_score: float = 0.0, max_score: float = 10.0
) -> dict[str, float | None]:
    """Per-candidate scores (``A: 7``, ``Candidate B - 3/10``, ``**C**: 9``) mapped to [0, 1];
    a candidate the judge did not score clearly is None."""
    out: dict[str, float | None] = {}
    text = text if isinstance(text, str) else ""
    for label in labels:
        pattern = re.compile(
            rf"(?:^|\n|\s)(?:candidate\s+)?\**{re.escape(label)}\**\s*[:=\-)]\s*(.*)", re.I
        )
        found = pattern.findall(text)
        out[label] = parse_score(found[-1].split("\n")[0], min_score, max_score) if found else None
        if out[label] is None and found:
            head = re.match(rf"\s*({_NUM})", found[-1])
            if head and min_score <= float(head.group(1)) <= max_score:
                out[label] = (float(head.group(1)) - min_score) / (max_score - min_score)
    return out


def transcript(traj: Trajectory) -> str:
    """The episode as the judge reads it."""
    lines = [f"Task: {traj.task.prompt}"]
    for i, t in enumerate(traj.turns, 1):
        lines.append(f"Agent (turn {i}): {t.action}")
        if t.observation:
            lines.append(f"Environment: {t.observation}")
    if traj.status == "truncated":
        lines.append("[the episode hit its turn or length limit]")
    return "\n".join(lines)


class JudgeReward(Reward):
    """backend: ``local`` (``judge``: a model spec) or ``openai`` (``url``, ``model_name``,
    ``auth_env``). rubric: the instructions (``{min_score}``, ``{max_score}`` and, relative,
    ``{labels}`` are filled in). relative: score each group's episodes together. Every argument
    is a field of conf/reward/judge.yaml."""

    name = "judge"

    def __init__(
        self,
        backend: str = "local",
        judge=None,
        url: str | None = None,
        model_name: str = "gpt-4o-mini",
        auth_env: str | None = "OPENAI_API_KEY",
        rubric: str | None = None,
        relative: bool = False,
        min_score: float = 0.0,
        max_score: float = 10.0,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        unparseable_value: float | None = 0.0,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        max_concurrency: int = 4,
        batch_size: int = 16,
        answer_prefix: str | None = "Score:",
    ):
        if backend not in ("local", "openai"):
            raise ValueError(f"reward.backend must be local or openai, got {backend!r}")
        if backend == "local" and not hasattr(judge, "load"):
            raise ValueError("reward.backend=local needs reward.judge, a model spec (_target_)")
        if backend == "openai" and not str(url or "").startswith(("http://", "https://")):
            raise ValueError(f"reward.backend=openai needs reward.url (http[s]://...), got {url!r}")
        if not max_score > min_score:
            raise ValueError(f"reward.max_score must be > min_score ({max_score} <= {min_score})")
        self.backend = backend
        self.judge = judge
        self.url = (url or "").rstrip("/")
        self.model_name = model_name
        self.auth_env = auth_env
        self.relative = relative
        self.rubric = rubric or (RELATIVE_RUBRIC if relative else DEFAULT_RUBRIC)
        self.min_score = min_score
        self.max_score = max_score
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.unparseable_value = unparseable_value
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        self.batch_size = batch_size
        self.answer_prefix = answer_prefix
        self._model = None
        self._tokenizer = None
        self._stats: dict[str, float] = {}

    # -------------------------------------------------------------- scoring
    def __call__(self, task, trajectory: Trajectory) -> RewardOutput:
        out = self.score_batch([trajectory])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def score_batch(self, trajectories: list[Trajectory]) -> list:
        self._stats = {"calls": 0, "unparseable": 0, "errors": 0}
        if self.relative:
            scores = self._relative_scores(trajectories)
        else:
            prompts = [self._prompt(transcript(t)) for t in trajectories]
            scores = [self._parse(a) for a in self._ask(prompts)]
        return [self._output(s) for s in scores]

    def _relative_scores(self, trajectories: list[Trajectory]) -> list:
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(trajectories):
            groups.setdefault((t.group, t.task.id), []).append(i)
        order = list(groups.values())
        prompts = []
        for idx in order:
            labels = [_label(j) for j in range(len(idx))]
            body = "\n\n".join(
                f"Candidate {lab}:\n{transcript(trajectories[i])}" for lab, i in zip(labels, idx)
            )
            prompts.append(self._prompt(body, labels))
        scores: list = [None] * len(trajectories)
        for idx, answer in zip(order, self._ask(prompts)):
            labels = [_label(j) for j in range(len(idx))]
            if isinstance(answer, BaseException):
                for i in idx:
                    scores[i] = answer
                continue
            parsed = parse_group_scores(answer, labels, self.min_score, self.max_score)
            for lab, i in zip(labels, idx):
                scores[i] = parsed[lab]
                self._stats["unparseable"] += parsed[lab] is None
        return scores

    def _parse(self, answer):
        if isinstance(answer, BaseException):
            return answer
        score = parse_score(answer, self.min_score, self.max_score)
        if score is None:
            self._stats["unparseable"] += 1
            log.debug("judge answer not parseable: %r", answer[:200])
        return score

    def _output(self, score):
        if isinstance(score, BaseException):
            return score
        if score is None:
            if self.unparseable_value is None:
                return ValueError("judge: unparseable answer")
            v = float(self.unparseable_value)
            return RewardOutput(v, {"judge": v, "judge_unparseable": 1.0})
        return RewardOutput(score, {"judge": score, "judge_unparseable": 0.0})

    def _prompt(self, body: str, labels: list[str] | None = None) -> list[dict]:
        rubric = self.rubric.format(
            min_score=_fmt(self.min_score),
            max_score=_fmt(self.max_score),
            labels=", ".join(labels or []),
        )
        return [{"role": "system", "content": rubric}, {"role": "user", "content": body}]

    def metrics(self) -> dict[str, float]:
        if not self._stats:
            return {}
        return {
            "reward/judge_calls": self._stats["calls"],
            "reward/judge_unparseable": self._stats["unparseable"],
            "reward/judge_errors": self._stats["errors"],
        }

    # -------------------------------------------------------------- backends
    def _ask(self, conversations: list[list[dict]]) -> list:
        """One answer (text, or the exception that prevented it) per conversation."""
        self._stats["calls"] += len(conversations)
        if not conversations:
            return []
        if self.backend == "local":
            return self._ask_local(conversations)
        workers = min(self.max_concurrency, len(conversations))
        with ThreadPoolExecutor(workers, thread_name_prefix="judge") as pool:
            answers = list(pool.map(self._ask_endpoint, conversations))
        self._stats["errors"] += sum(isinstance(a, BaseException) for a in answers)
        return answers

    @torch.no_grad()
    def _ask_local(self, conversations: list[list[dict]]) -> list[str]:
        if self._model is None:
            self._model, self._tokenizer = self.judge.load()
            self._model.eval()
        tok, model = self._tokenizer, self._model
        tok.padding_side = "left"
        device = next(model.parameters()).device
        answers = []
        for i in range(0, len(conversations), self.batch_size):
            prefix = self._local_prefix()
            texts = [
                tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + prefix
                for c in conversations[i : i + self.batch_size]
            ]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            answers += [prefix + a for a in tok.batch_decode(new, skip_special_tokens=True)]
        return answers

    def _local_prefix(self) -> str:
        """The start of the local judge's answer, written for it (small models then go on with
        the number): ``answer_prefix`` when scoring alone, ``A:`` when comparing candidates."""
        if self.relative:
            return "A:"
        return self.answer_prefix or ""

    def _ask_endpoint(self, messages: list[dict]):
        body = json.dumps(
            {
                "model": self.model_name,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": self.max_new_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.auth_env) if self.auth_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(
                f"{self.url}/chat/completions", data=body, headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                    data = json.loads(resp.read())
                return str(data["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    break
            except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                last = f"{type(exc).__name__}: {exc}"[:200]
        return RuntimeError(f"judge endpoint {self.url}: {last}")


def _label(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"A{i}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
