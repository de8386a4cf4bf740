"""Token-exact multi-turn formatting through the tokenizer's own chat template.

The prompt is rendered once. After each generated turn the episode is extended by the tokens of
the observation turn only: the text the template puts between the end of the assistant's message
and the start of the next assistant message. That delta is found by rendering a probe
conversation with and without one more observation turn, so any chat template works, and the
tokens the policy generated are never decoded and re-encoded.
"""

from __future__ import annotations

_PROBE_USER = "probe-user-text"
_PROBE_REPLY = "probe-reply-text"


class ChatFormat:
    """observation_role: the role observations are sent as ("user" works with every template;
    "tool" where the template supports it)."""

    def __init__(self, tokenizer, observation_role: str = "user"):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; set one on the model's tokenizer")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token to end a turn with")
        self.tokenizer = tokenizer
        self.observation_role = observation_role
        self.end_of_turn_id = tokenizer.eos_token_id
        self._obs_prefix, self._obs_suffix = self._observation_frame()

    def _render(self, messages, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _observation_frame(self) -> tuple[str, str]:
        """The text around an observation, from the end of the assistant's eos to the next reply."""
        base = [
            {"role": "user", "content": _PROBE_USER},
            {"role": "assistant", "content": _PROBE_REPLY},
        ]
        marker = "probe-observation-text"
        full = self._render(base + [{"role": self.observation_role, "content": marker}], True)
        eos = self.tokenizer.eos_token
        anchor = _PROBE_REPLY + eos
        cut = full.find(anchor)
        if cut < 0:
            raise ValueError(
                "the chat template does not end assistant messages with the eos token "
                f"{eos!r}; cannot extend episodes token-exactly"
            )
        delta = full[cut + len(anchor) :]
        prefix, _, suffix = delta.partition(marker)
        return prefix, suffix

    def messages(self, system: str | None, user: str) -> list[dict]:
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + [{"role": "user", "content": user}]

    def prompt_ids(self, system: str | None, user: str) -> list[int]:
        text = self._render(self.messages(system, user), True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def action_ids(self, action: str) -> list[int]:
        """Ids of an assistant action as the policy would emit it (used for demonstrations)."""
        return self.tokenizer(action, add_special_tokens=False)["input_ids"] + [self.end_of_turn_id]

    def observation_ids(self, observation: str) -> list[int]:
        """Ids that follow a finished assistant turn: the observation and the next reply header."""
        text = self._obs_prefix + observation + self._obs_suffix
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]
