"""``POST /v1/responses`` (OpenAI's Responses API) on top of the chat-completions path.

A Responses request is converted to a chat-completions body (``instructions`` -> a system message
first, input items -> messages, function tools -> chat tools, ``max_output_tokens`` ->
``max_tokens``) and goes through ``Gateway.submit`` like any chat completion: the same rendering,
generation, sampling rules and token-exact record, so a Responses conversation whose prompts
extend each other merges into one sequence exactly as a chat one does. The chat result is then
converted back: a ``message`` item with ``output_text`` and one ``function_call`` item per tool
call.

Each answered response is kept with its conversation (the input messages, history included, and
the assistant's answer; not the instructions, which OpenAI does not carry over either), per rollout
(the unattributed ones: the last ``MAX_UNATTRIBUTED`` on the gateway), so a follow-up request
with ``previous_response_id`` continues it: prior input + prior output + new input.
"""

from __future__ import annotations

import json
import time
import uuid
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
def to_response(body: dict, result: dict) -> dict:
    """The Responses object of a chat-completions result."""
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
                "id": _new_id("msg"),
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
        "id": _new_id("resp"),
        "object": "response",
        "created_at": result["created"],
        "completed_at": int(time.time()),
        "status": status,
        "model": result["model"],
        "output": output,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
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
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        },
    }


def create(submit, body: dict, rollout, store: dict, lock) -> tuple[dict, list[str]]:
    """Serve one Responses request through ``submit`` (``Gateway.submit``); (the response, the
    text of each generated token, for streaming). Keeps the response in ``store`` (guarded by
    ``lock``) for ``previous_response_id``."""
    history: list[dict] = []
    prev = body.get("previous_response_id")
    if prev is not None:
        with lock:
            found = store.get(prev) if isinstance(prev, str) else None
        if found is None:
            scope = f"rollout {rollout.id!r}" if rollout else "the gateway (no rollout)"
            raise _bad(f"previous_response_id {prev!r}: no such response in {scope}")
        history = found
    chat, conversation = to_chat(body, history)
    result = submit(chat, rollout)
    response = to_response(body, result)
    message = result["choices"][0]["message"]
    answer = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        answer["tool_calls"] = message["tool_calls"]
    with lock:
        store[response["id"]] = [*conversation, answer]
        while rollout is None and len(store) > MAX_UNATTRIBUTED:
            store.pop(next(iter(store)))
    return response, result["_token_texts"]


# ------------------------------------------------------------------------ streaming
def events(response: dict, token_texts: list[str]) -> list[tuple[str, dict]]:
    """The Responses stream of a finished response: (event type, payload) in OpenAI's order. The
    text goes one generated token per delta when the tokens spell it, else in one delta."""
    out: list[tuple[str, dict]] = []

    def emit(kind: str, **payload) -> None:
        out.append((kind, {"type": kind, "sequence_number": len(out), **payload}))

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    pending["incomplete_details"] = None
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    for n, item in enumerate(response["output"]):
        at = {"item_id": item["id"], "output_index": n}
        if item["type"] == "message":
            part = item["content"][0]
            emit(
                "response.output_item.added",
                output_index=n,
                item={**item, "status": "in_progress", "content": []},
            )
            empty = {**part, "text": "", "logprobs": []}
            emit("response.content_part.added", **at, content_index=0, part=empty)
            pieces = token_texts if "".join(token_texts) == part["text"] else [part["text"]]
            for piece in pieces:
                if piece:
                    emit(
                        "response.output_text.delta",
                        **at,
                        content_index=0,
                        delta=piece,
                        logprobs=[],
                    )
            emit(
                "response.output_text.done",
                **at,
                content_index=0,
                text=part["text"],
                logprobs=part["logprobs"],
            )
            emit("response.content_part.done", **at, content_index=0, part=part)
        else:
            emit(
                "response.output_item.added",
                output_index=n,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            emit("response.function_call_arguments.delta", **at, delta=item["arguments"])
            emit(
                "response.function_call_arguments.done",
                **at,
                name=item["name"],
                arguments=item["arguments"],
            )
        emit("response.output_item.done", output_index=n, item=item)
    final = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    emit(final, response=response)
    return out
