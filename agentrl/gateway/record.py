"""What the gateway records per rollout, and how the calls become token-exact trajectories.

Every chat completion of a rollout is recorded as the prompt ids the engine saw (the request's
messages rendered with the chat template and tokenized once) and the ids it generated, with their
behaviour log-probs. ``segments`` merges calls: when a call's prompt starts with an earlier call's
sequence (its prompt + response, and whatever extended it since), only the new tokens in between
(the end of the assistant turn, the tool results, the next header) are appended, with loss_mask
0. Otherwise the call starts a new sequence (its own transition). The generated ids are never re-tokenized.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from agentrl.types import Task, Trajectory, Turn


@dataclass
class CallRecord:
    """One chat completion. prompt_ids: [P]; response_ids and logprobs: [R] (the engine's);
    text: the decoded response; tool_calls: the parsed OpenAI tool calls; finish: the engine's."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finish: str
    text: str
    tool_calls: list[dict]
    messages: list[dict]


@dataclass
class RolloutRecord:
    """The calls of one rollout in arrival order, and the reward its program reported.

    token: the rollout's own bearer token (random), given to its program only: it authorizes
    this rollout's routes and no other's, and is the only token its reward is accepted with."""

    id: str
    task: Task
    calls: list[CallRecord] = field(default_factory=list)
    reward: float | None = None
    success: bool | None = None
    # completions served so far (the index of the next one); the engine thread counts them
    requests: int = 0
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Responses API: response id -> its conversation (for previous_response_id)
    responses: dict[str, list[dict]] = field(default_factory=dict, repr=False)
    # the requests of this rollout the gateway refused: "POST /v1/embeddings (404)", in order
    refused: list[str] = field(default_factory=list)

    def add(self, call: CallRecord) -> int:
        with self.lock:
            self.calls.append(call)
            return len(self.calls) - 1

    def refuse(self, what: str) -> None:
        with self.lock:
            if len(self.refused) < 64:  # a program looping on a refused route: enough to tell
                self.refused.append(what)

    def refusals(self, most: int = 3) -> str:
        """'' or '; the gateway refused: POST /v1/x (404), ...' (the first ``most`` distinct)."""
        with self.lock:
            seen = list(dict.fromkeys(self.refused))
        if not seen:
            return ""
        more = f" and {len(seen) - most} more" if len(seen) > most else ""
        return "; the gateway refused: " + ", ".join(seen[:most]) + more


@dataclass
class Segment:
    """One token sequence of a rollout: the prompt of its first call, then each call's response
    (loss_mask 1) and the tokens that the next call's prompt added (loss_mask 0)."""

    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_len: int
    spans: list[tuple[int, int]]
    calls: list[int]


def _extended(out: list[Segment], prompt_ids: list[int]) -> Segment | None:
    """The longest segment whose tokens start ``prompt_ids`` (the latest of equals), else None."""
    best = None
    for seg in out:
        n = len(seg.token_ids)
        if prompt_ids[:n] == seg.token_ids and (best is None or n >= len(best.token_ids)):
            best = seg
    return best


def segments(calls: list[CallRecord]) -> list[Segment]:
    """The rollout's calls as sequences. A call extends the sequence its prompt starts with (the
    longest such, not only the last one: an agent that alternates conversations, e.g. a planner
    and an executor with their own system prompts, gives one sequence per conversation);
    otherwise it starts a new one."""
    out: list[Segment] = []
    for k, call in enumerate(calls):
        seg = _extended(out, call.prompt_ids)
        if seg is not None:
            extra = call.prompt_ids[len(seg.token_ids) :]
            seg.token_ids += extra
            seg.loss_mask += [0] * len(extra)
            seg.logprobs += [0.0] * len(extra)
        else:
            seg = Segment(
                list(call.prompt_ids),
                [0] * len(call.prompt_ids),
                [0.0] * len(call.prompt_ids),
                len(call.prompt_ids),
                [],
                [],
            )
            out.append(seg)
        start = len(seg.token_ids)
        seg.token_ids += call.response_ids
        seg.loss_mask += [1] * len(call.response_ids)
        seg.logprobs += list(call.logprobs)
        seg.spans.append((start, len(seg.token_ids)))
        seg.calls.append(k)
    return out


def trajectories(
    record: RolloutRecord, group: int, tokenizer, status: str = "ok", error: str | None = None
) -> list[Trajectory]:
    """One Trajectory per segment of the rollout (one empty one when no call was made). Each turn
    is one call; the last turn of each segment carries the rollout's reward as its step reward."""
    segs = segments(record.calls)
    if not segs:
        return [
            Trajectory(
                record.task, [], [], [], 0, group=group, status=status, error=error, success=False
            )
        ]
    out = []
    for n, seg in enumerate(segs):
        turns = []
        for j, (k, span) in enumerate(zip(seg.calls, seg.spans)):
            call = record.calls[k]
            end = seg.spans[j + 1][0] if j + 1 < len(seg.spans) else span[1]
            between = tokenizer.decode(seg.token_ids[span[1] : end], skip_special_tokens=True)
            info: dict[str, Any] = {
                "rollout": record.id,
                "segment": n,
                "call": k,
                "finish": call.finish,
                "tool_calls": [c["function"] for c in call.tool_calls],
                "tool": call.tool_calls[0]["function"]["name"] if call.tool_calls else None,
            }
            turns.append(Turn(call.text, between, 0.0, span, info))
        if turns and record.reward is not None:
            turns[-1].reward = float(record.reward)
        out.append(
            Trajectory(
                task=record.task,
                token_ids=seg.token_ids,
                loss_mask=seg.loss_mask,
                logprobs=seg.logprobs,
                prompt_len=seg.prompt_len,
                turns=turns,
                success=bool(record.success) if status != "failed" else False,
                group=group,
                status=status,
                error=error,
            )
        )
    return out
