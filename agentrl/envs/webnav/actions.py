"""The webnav action syntax: one action a turn, validated; a malformed one gets an error message.

click [3]            follow a link or press a button
type [4] "red hat"   put text into a text field (replaces its value)
submit               submit the form of the last field typed into (or the page's only form)
back                 go back to the previous page
answer "$23"         end the episode with an answer (price goals)
finish               end the episode (purchase goals)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# the longest text a type or answer action may carry
MAX_TEXT = 60
ERR_FORMAT = 'error: expected click [n], type [n] "text", submit, back, answer "text" or finish'

_PATTERNS = {
    "click": re.compile(r"click\s*\[\s*(\d{1,4})\s*\]"),
    "type": re.compile(rf'type\s*\[\s*(\d{{1,4}})\s*\]\s*"([^"\n]{{0,{MAX_TEXT}}})"'),
    "answer": re.compile(rf'answer\s*"([^"\n]{{0,{MAX_TEXT}}})"'),
    "submit": re.compile(r"submit"),
    "back": re.compile(r"back"),
    "finish": re.compile(r"finish"),
}


@dataclass(frozen=True)
class Action:
    """A parsed action: ``verb`` (None when unreadable), element number ``n``, ``text``."""

    verb: str | None
    n: int | None = None
    text: str | None = None
    error: str | None = None


def parse_action(text: str) -> Action:
    """Parse one action; never raises. A malformed action has ``error`` set."""
    body = text.strip()
    verb = body.split("[", 1)[0].split('"', 1)[0].split()[:1]
    pattern = _PATTERNS.get(verb[0]) if verb else None
    m = pattern.fullmatch(body) if pattern is not None else None
    if m is None:
        return Action(None, error=ERR_FORMAT)
    name = verb[0]
    if m.lastindex and any(ord(c) < 32 or ord(c) == 127 for c in m.group(m.lastindex)):
        return Action(None, error=ERR_FORMAT)  # control characters: not text a field can hold
    if name == "click":
        return Action(name, n=int(m.group(1)))
    if name == "type":
        return Action(name, n=int(m.group(1)), text=m.group(2))
    if name == "answer":
        return Action(name, text=m.group(1))
    return Action(name)


def click(n: int) -> str:
    return f"click [{n}]"


def type_(n: int, text: str) -> str:
    return f'type [{n}] "{text}"'


def answer(text: str) -> str:
    return f'answer "{text}"'
