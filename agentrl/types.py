"""Plain data passed between the phases of the loop.

Shapes use T for the number of tokens of one episode (prompt, every turn and every observation,
concatenated in order). Nothing here holds a reference to a model or an env.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Task:
    """One sample of an env's task source.

    id: stable identifier, unique within the env ("toolcalc/train/123").
    prompt: the text the agent first sees (the user turn).
    answer: what the verifier checks against (env specific: a number, a string, a dict).
    meta: anything else the env needs (difficulty, the program, the site seed...).
    """

    id: str
    prompt: str
    answer: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Turn:
    """One agent action and what came back.

    action: the decoded text the policy generated in this turn.
    observation: the env's reply (error messages for malformed actions included); "" when done.
    reward: the env's per-step reward for this action.
    span: (start, end) token offsets of the generated tokens inside Trajectory.token_ids.
    info: the env's info dict for this step (e.g. {"tool": "calc", "error": None}).
    """

    action: str
    observation: str
    reward: float
    span: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """One multi-turn episode, token-exact.

    token_ids: list[int] of length T. The prompt ids followed, turn by turn, by the ids the policy
        generated and the ids of the observation that followed. Never re-tokenized from text.
    loss_mask: list[int] of length T. 1 on tokens the policy generated, 0 on prompt, observation
        and tool-output tokens.
    logprobs: list[float] of length T. The rollout engine's (behaviour) log-probability of each
        generated token; 0.0 where loss_mask is 0.
    prompt_len: number of leading prompt tokens.
    turns: the turns in order; turns[i].span indexes token_ids.
    reward: the scalar episode reward the algorithm sees (filled by the score phase).
    reward_components: named parts of the reward, each logged as reward/<name>.
    success: the env verifier's outcome (None until scored).
    group: index of the task inside the step's batch; samples of one task share a group.
    status: "ok", "truncated" (turn or length cap hit), or "failed" (an env or reward error).
    error: the message of the error that marked it failed, if any.
    """

    task: Task
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_len: int
    turns: list[Turn] = field(default_factory=list)
    reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    success: bool | None = None
    group: int = 0
    status: str = "ok"
    error: str | None = None

    @property
    def num_generated(self) -> int:
        return int(sum(self.loss_mask))

    @property
    def turn_rewards(self) -> list[float]:
        return [t.reward for t in self.turns]

    def to_record(self, tokenizer=None) -> dict[str, Any]:
        """A JSON-serialisable view for sample logs (text, not tokens)."""
        rec: dict[str, Any] = {
            "task_id": self.task.id,
            "prompt": self.task.prompt,
            "answer": self.task.answer,
            "turns": [
                {
                    "action": t.action,
                    "observation": t.observation,
                    "reward": t.reward,
                    "info": t.info,
                }
                for t in self.turns
            ],
            "reward": self.reward,
            "reward_components": self.reward_components,
            "success": self.success,
            "status": self.status,
            "error": self.error,
            "num_tokens": len(self.token_ids),
            "num_generated": self.num_generated,
        }
        return rec
