"""``POST /v1/responses`` (OpenAI's Responses API) on top of the chat-completions path.

A Responses request is converted to a chat-completions body (``instructions`` -> a system message
first, input items -> messages, function tools -> chat tools, ``max_output_tokens`` ->
``max_tokens``) and goes through ``Gateway.submit`` like any chat completion: the same rendering,
generation, sampling rules and token-exact record, so a Responses conversation whose prompts
extend each other merges into one sequence exactly as a chat one does. The chat result is then
converted back: a ``message`` item with ``output_text`` and one ``function_call`` item per tool
call. A streamed request is read through ``Gateway.stream``: its events (``EventStream``) are
built as the text is generated.

Each answered response is kept with its conversation (the input messages, history included, and
the assistant's answer; not the instructions, which OpenAI does not carry over either), per rollout
(the unattributed ones: the last ``MAX_UNATTRIBUTED`` on the gateway), so a follow-up request
with ``previous_response_id`` continues it: prior input + prior output + new input.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from agentrl.gateway.handler import HTTPError

# responses kept for requests attributed to no rollout (the oldest go first)
MAX_UNATTRIBUTED = 1024
# fields of the Responses API the gateway does not implement: refused rather than ignored
_UNSUPPORTED = ("conversation", "prompt", "background")
_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text")


def _bad(message: str) -> HTTPError:
    return HTTPError(400, message)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ------------------------------------------------------------------------ request -> chat
def _text(content: Any, where: str) -> str:
    """A message's (or a tool output's) content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content parts")
    out = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise _bad(f"{where}[{j}] must be an object")
        kind = part.get("type")
        if kind not in _TEXT_PARTS:
            raise _bad(
                f"{where}[{j}].type {kind!r} is not supported (text only: input_text, output_text)"
            )
        if not isinstance(part.get("text"), str):
            raise _bad(f"{where}[{j}].text must be a string")
        out.append(part["text"])
    return "".join(out)


def _call_ids(messages: list[dict]) -> set[str]:
    return {c["id"] for m in messages for c in m.get("tool_calls") or [] if "id" in c}


def _function_call(item: dict, where: str) -> dict:
    for key in ("call_id", "name"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise _bad(f"{where}.{key} must be a non-empty string")
    args = item.get("arguments")
    try:
        ok = isinstance(args, str) and isinstance(json.loads(args), dict)
    except ValueError:
        ok = False
    if not ok:
        raise _bad(f"{where}.arguments must be a string holding a JSON object, got {args!r}")
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": args},
    }


def _input_messages(items: Any, history: list[dict]) -> list[dict]:
    """The request's ``input`` as chat messages. A ``function_call`` joins the assistant message
    right before it (the text and the calls of one model turn), as chat completions carry them."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise _bad("input must be a string or a list of items")
    known = _call_ids(history)
    out: list[dict] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _bad(f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}")
            if "content" not in item:
                raise _bad(f"{where}.content is required")
            out.append({"role": role, "content": _text(item["content"], f"{where}.content")})
        elif kind == "function_call":
            call = _function_call(item, where)
            known.add(call["id"])
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last["tool_calls"] = [*last.get("tool_calls", []), call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            cid = item.get("call_id")
            if not isinstance(cid, str) or cid not in known:
                raise _bad(f"{where}.call_id {cid!r} answers no earlier function_call")
            if "output" not in item:
                raise _bad(f"{where}.output is required")
            content = _text(item["output"], f"{where}.output")
            out.append({"role": "tool", "tool_call_id": cid, "content": content})
        else:
            raise _bad(
                f"{where}.type {kind!r} is not supported "
                "(message, function_call, function_call_output)"
            )
    return out


def _tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _bad("tools must be a list")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else t
            raise _bad(f"tools[{i}].type {kind!r} is not supported (function tools only)")
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise _bad(f"tools[{i}].name must be a non-empty string")
        fn = {"name": t["name"], "parameters": t.get("parameters") or {}}
        if t.get("description") is not None:
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out or None


def _tool_choice(choice: Any, tools: list[dict] | None) -> str | None:
    """``none`` drops the tools, as in chat completions; ``auto``, ``required`` and a declared
    function are accepted (the model is not forced to call)."""
    if choice is None or choice in ("auto", "required", "none"):
        return choice
    names = [t["function"]["name"] for t in tools or []]
    if isinstance(choice, dict) and choice.get("type") == "function":
        if choice.get("name") not in names:
            raise _bad(f"tool_choice names {choice.get('name')!r}, not a declared tool")
        return "auto"
    raise _bad(f"tool_choice {choice!r} is not supported (auto, none, required, a function)")


def _refuse_unsupported(body: dict) -> None:
    for key in _UNSUPPORTED:
        if body.get(key):
            raise _bad(f"{key} is not supported by the gateway")
    if body.get("n", 1) != 1:
        raise _bad(f"n: only n=1 is supported, got {body['n']!r}")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise _bad("response_format: only plain text is supported")
    text = body.get("text")
    if text is not None:
        fmt = text.get("format") if isinstance(text, dict) else text
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            kind = fmt.get("type") if isinstance(fmt, dict) else fmt
            raise _bad(f"text.format {kind!r} is not supported (plain text only)")


def to_chat(body: dict, history: list[dict]) -> tuple[dict, list[dict]]:
    """(the chat-completions body, the conversation without the instructions); 400 naming the
    field on bad input."""
    _refuse_unsupported(body)
    if "input" not in body:
        raise _bad("input is required (a string or a list of items)")
    conversation = [*history, *_input_messages(body["input"], history)]
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("instructions must be a string")
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + (
        conversation
    )
    if not messages:
        raise _bad("input is empty and there are no instructions: nothing to answer")
    tools = _tools(body.get("tools"))
    chat: dict[str, Any] = {"messages": messages}
    if tools:
        chat["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"), tools)
    if choice is not None:
        chat["tool_choice"] = choice
    want = body.get("max_output_tokens")
    if want is not None:
        if isinstance(want, bool) or not isinstance(want, int) or want < 1:
            raise _bad(f"max_output_tokens must be a positive integer, got {want!r}")
        chat["max_tokens"] = want
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    include = body.get("include") or []
    if isinstance(include, list) and "message.output_text.logprobs" in include:
        chat["logprobs"] = True
    return chat, conversation


# ------------------------------------------------------------------------ chat -> response
def _envelope(body: dict, ident: dict) -> dict:
    """The fields of a response that do not depend on its output (``ident``: ``id``,
    ``created_at``, ``model``, ``message_id``)."""
    return {
        "id": ident["id"],
        "object": "response",
        "created_at": ident["created_at"],
        "completed_at": None,
        "status": "in_progress",
        "model": ident["model"],
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "previous_response_id": body.get("previous_response_id"),
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": True,
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": None,
    }


def _ident(head: dict) -> dict:
    """A new response's ids, from its chat completion's ``id``, ``created`` and ``model``."""
    return {
        "id": _new_id("resp"),
        "created_at": head["created"],
        "model": head["model"],
        "message_id": _new_id("msg"),
    }


def to_response(body: dict, result: dict, ident: dict | None = None) -> dict:
    """The Responses object of a chat-completions result (``ident``: its ids; new ones when not
    given)."""
    ident = ident or _ident(result)
    choice = result["choices"][0]
    message = choice["message"]
    incomplete = choice["finish_reason"] == "length"
    status = "incomplete" if incomplete else "completed"
    output: list[dict] = []
    calls = message.get("tool_calls") or []
    if message.get("content") is not None or not calls:
        lps = (choice.get("logprobs") or {}).get("content") or []
        part = {
            "type": "output_text",
            "text": message.get("content") or "",
            "annotations": [],
            "logprobs": lps,
        }
        output.append(
            {
                "id": ident["message_id"],
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": [part],
            }
        )
    for call in calls:
        output.append(
            {
                "id": _new_id("fc"),
                "type": "function_call",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "status": "completed",
            }
        )
    usage = result["usage"]
    return {
        **_envelope(body, ident),
        "completed_at": int(time.time()),
        "status": status,
        "output": output,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        },
    }


def _prepare(body: dict, rollout, store: dict, lock) -> tuple[dict, list[dict]]:
    """(the chat body, the conversation): ``previous_response_id``'s history, then ``to_chat``."""
    history: list[dict] = []
    prev = body.get("previous_response_id")
    if prev is not None:
        with lock:
            found = store.get(prev) if isinstance(prev, str) else None
        if found is None:
            scope = f"rollout {rollout.id!r}" if rollout else "the gateway (no rollout)"
            raise _bad(f"previous_response_id {prev!r}: no such response in {scope}")
        history = found
    return to_chat(body, history)


def _keep(response: dict, result: dict, conversation: list[dict], rollout, store, lock) -> None:
    """Keep the response's conversation in ``store`` for ``previous_response_id``."""
    message = result["choices"][0]["message"]
    answer = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        answer["tool_calls"] = message["tool_calls"]
    with lock:
        store[response["id"]] = [*conversation, answer]
        while rollout is None and len(store) > MAX_UNATTRIBUTED:
            store.pop(next(iter(store)))


def create(submit, body: dict, rollout, store: dict, lock) -> dict:
    """Serve one Responses request through ``submit`` (``Gateway.submit``). Keeps the response
    in ``store`` (guarded by ``lock``) for ``previous_response_id``."""
    chat, conversation = _prepare(body, rollout, store, lock)
    result = submit(chat, rollout)
    response = to_response(body, result)
    _keep(response, result, conversation, rollout, store, lock)
    return response


def stream(read, body: dict, rollout, store: dict, lock) -> Iterator[tuple[str, dict]]:
    """Serve one streamed Responses request through ``read`` (``Gateway.stream``): its events
    (type, payload) as the text is generated. Bad input raises before the first event."""
    chat, conversation = _prepare(body, rollout, store, lock)
    events = EventStream(body)
    for kind, *payload in read(chat, rollout):
        if kind == "start":
            yield from events.start(payload[0])
        elif kind == "text":
            yield from events.text(payload[0])
        else:
            response = to_response(body, payload[0], events.ident)
            _keep(response, payload[0], conversation, rollout, store, lock)
            yield from events.finish(response)


# ------------------------------------------------------------------------ streaming
class EventStream:
    """The Responses stream of one response, in OpenAI's order, built as the text arrives:
    ``response.created``, ``response.in_progress``; the message item (``output_item.added``,
    ``content_part.added``) with the first text, then one ``output_text.delta`` per piece of text;
    at the end the rest of the message item's events (or all of them, when no text came before
    the end), one set per function call, and ``response.completed`` (or ``.incomplete``)."""

    def __init__(self, body: dict):
        self.body = body
        self.ident: dict = {}
        self.count = 0
        self.opened = False  # the message item was announced

    def _event(self, kind: str, **payload) -> tuple[str, dict]:
        self.count += 1
        return kind, {"type": kind, "sequence_number": self.count - 1, **payload}

    def start(self, head: dict) -> list[tuple[str, dict]]:
        """head: the chat completion's ``id``, ``created``, ``model``."""
        self.ident = _ident(head)
        pending = _envelope(self.body, self.ident)
        return [
            self._event("response.created", response=pending),
            self._event("response.in_progress", response=pending),
        ]

    def _open(self) -> list[tuple[str, dict]]:
        self.opened = True
        item = {
            "id": self.ident["message_id"],
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", output_index=0, item=item),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=0,
                content_index=0,
                part=empty,
            ),
        ]

    def text(self, delta: str) -> list[tuple[str, dict]]:
        if not delta:
            return []
        out = [] if self.opened else self._open()
        at = {"item_id": self.ident["message_id"], "output_index": 0, "content_index": 0}
        out.append(self._event("response.output_text.delta", **at, delta=delta, logprobs=[]))
        return out

    def finish(self, response: dict) -> list[tuple[str, dict]]:
        out: list[tuple[str, dict]] = []
        for n, item in enumerate(response["output"]):
            at = {"item_id": item["id"], "output_index": n}
            if item["type"] == "message":
                part = item["content"][0]
                if not self.opened:
                    out += self._open()
                    out += self.text(part["text"])
                out.append(
                    self._event(
                        "response.output_text.done",
                        **at,
                        content_index=0,
                        text=part["text"],
                        logprobs=part["logprobs"],
                    )
                )
                out.append(
                    self._event("response.content_part.done", **at, content_index=0, part=part)
                )
            else:
                added = {**item, "status": "in_progress", "arguments": ""}
                out.append(self._event("response.output_item.added", output_index=n, item=added))
                out.append(
                    self._event(
                        "response.function_call_arguments.delta", **at, delta=item["arguments"]
                    )
                )
                out.append(
                    self._event(
                        "response.function_call_arguments.done",
                        **at,
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                )
            out.append(self._event("response.output_item.done", output_index=n, item=item))
        final = (
            "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        )
        out.append(self._event(final, response=response))
        return out
