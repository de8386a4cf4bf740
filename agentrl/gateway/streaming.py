"""Streaming: the text of a completion leaves as the engine generates its tokens.

The engine thread feeds each sampled token to the request's ``TextStream`` (``push``), which
decodes the whole response so far (the same decoding as the final text: end-of-sequence ids
dropped, special tokens skipped) and sends what it adds to the text already sent. The text is
decoded from the ids, never the ids from the text, so the record is untouched; the deltas put
together are exactly the final ``content`` of the non-streamed answer:

- a decoding that ends in an incomplete character (U+FFFD: a multi-byte character split across
  tokens) or that is not an extension of the text sent (a tokenizer that revises earlier text) is
  held until a later token completes it;
- when the request declares tools, the final content is the text without its tool calls,
  stripped; so the stream sends text only up to the first string that may begin a tool call (the
  tool format's ``call_openers``), holds trailing whitespace (it is stripped if a call follows)
  and holds a text that begins with whitespace until the turn ends (stripped or not, only the end
  tells). The rest, and the tool calls, go out once the turn is parsed (``finish``).

``Stream`` is what the HTTP thread reads: events put by the engine thread on a queue.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator

from agentrl.gateway.handler import HTTPError

log = logging.getLogger(__name__)


class TextStream:
    """One completion's text as it is generated.

    decode: ids -> text, the decoding of the final text; emit(delta, logprobs): sends a piece of
    text with the logprob entries of the tokens it completed; openers: the strings that begin a
    tool call ([] when no tools are declared: all text is content; None: not known, so the text is
    held to the end); eos_id: dropped from the text, as in the final text; entry(token_id,
    logprob): a token's logprob entry, or None when the request did not ask for them.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        emit: Callable[[str, list], None],
        openers: list[str] | None,
        eos_id: int | None,
        entry: Callable[[int, float], dict] | None = None,
    ):
        self.decode, self.emit, self.openers = decode, emit, openers
        self.eos_id, self.entry = eos_id, entry
        self.ids: list[int] = []
        self.sent = ""
        self.held = False  # a tool call has begun: nothing more until the end
        self._entries: list[dict] = []

    def push(self, token_id: int, logprob: float) -> None:
        if token_id != self.eos_id:
            self.ids.append(token_id)
        if self.entry is not None:
            self._entries.append(self.entry(token_id, logprob))
        if self.held:
            return
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return
        end = self._safe(text)
        if end > len(self.sent):
            delta, self.sent = text[len(self.sent) : end], text[:end]
            entries, self._entries = self._entries, []
            self.emit(delta, entries)

    def _safe(self, text: str) -> int:
        """How much of ``text`` is content whatever comes after it."""
        if self.openers is None:
            return 0
        if not self.openers:
            return len(text)
        cut = len(text)
        for opener in self.openers:
            at = text.find(opener)
            if at >= 0:
                cut, self.held = min(cut, at), True
            for k in range(min(len(opener) - 1, len(text)), 0, -1):
                if text.endswith(opener[:k]):  # may be the start of a call
                    cut = min(cut, len(text) - k)
                    break
        kept = text[:cut].rstrip()
        return 0 if kept[:1].isspace() else len(kept)

    def finish(self, content: str | None) -> None:
        """The turn is parsed: send the rest of its ``content`` (and any logprob entries left)."""
        content = content or ""
        if content.startswith(self.sent):
            rest = content[len(self.sent) :]
        else:  # a tokenizer whose decoding of a prefix is not a prefix of the decoding
            log.warning("gateway: the streamed text is not a prefix of the completion's content")
            rest = ""
        entries, self._entries = self._entries, []
        if rest or entries:
            self.emit(rest, entries)


class Stream:
    """What the engine thread tells the HTTP thread about one streamed completion, in order:
    ``start`` (prepared: the request is valid and queued for generation), ``text`` (delta,
    logprob entries) any number of times, then ``result`` (the non-streamed answer) or ``error``
    (an HTTPError; instead of ``start`` when the request is refused)."""

    def __init__(self) -> None:
        self._events: queue.Queue[tuple] = queue.Queue()

    def put(self, kind: str, *payload) -> None:
        self._events.put((kind, *payload))

    def read(self, timeout_s: float) -> Iterator[tuple]:
        """Yield ``("start",)``, ``("text", delta, entries)`` and last ``("result", result)``;
        raise the HTTPError of an ``error`` event, or 503 when ``timeout_s`` (for the whole
        completion) runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                event = self._events.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise HTTPError(503, "the policy did not answer in time", "server_error") from None
            if event[0] == "error":
                raise event[1]
            yield event
            if event[0] == "result":
                return
