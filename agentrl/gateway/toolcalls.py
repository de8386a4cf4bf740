"""How a model emits tool calls and sees tool results: OpenAI messages <-> the model's own text.

A format does three things for the gateway:

- ``render(messages)``: OpenAI chat messages (assistant ``tool_calls``, ``tool`` results, content
  parts) -> plain ``{"role", "content"}`` messages (plus keyword arguments) for the tokenizer's
  chat template, so an assistant turn renders as the text the model generated;
- ``parse(text, tools)``: the model's generated text -> ``(content, tool_calls)`` in OpenAI form;
- ``stop_strings(tools)``: strings that end a turn once a tool call is complete;
- ``call_openers(tools)``: strings that begin a tool call (a streamed answer's text is sent up to
  them, the rest once the turn is parsed; a format without this method streams nothing before
  the end of a turn that declares tools).

``TagFormat`` is for models without a tool-aware template (``<calc>12+7</calc>``: the tag is the
tool's name, the body its one string argument); ``HermesFormat`` for templates that take
``tools=`` and render ``tool_calls`` themselves (Qwen2.5, Hermes: ``<tool_call>{json}</tool_call>``).
"""

from __future__ import annotations

import json
import re
from typing import Any


def text_of(content: Any) -> str:
    """The text of an OpenAI message content: a string, None, or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise ValueError(f"message content must be a string or a list of parts, got {type(content)}")


def tool_names(tools: list[dict] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or [] if t.get("type", "function") == "function"]


def make_call(index: int, call_id: str, name: str, arguments: dict) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


class TagFormat:
    """``<name>body</name>`` for each declared tool ``name``; the body is the tool's first string
    parameter (its first required one, else its first property).

    tool_role: the chat role tool results are rendered as (``user`` for templates without one).
    result_template: how a tool result's text is framed (``{content}`` is replaced).
    """

    def __init__(
        self, tool_role: str = "tool", result_template: str = "<result>{content}</result>"
    ):
        if "{content}" not in result_template:
            raise ValueError(f"result_template must contain {{content}}, got {result_template!r}")
        self.tool_role = tool_role
        self.result_template = result_template

    @staticmethod
    def _param(tools: list[dict] | None, name: str) -> str | None:
        for t in tools or []:
            fn = t.get("function", {})
            if fn.get("name") == name:
                schema = fn.get("parameters") or {}
                required = schema.get("required") or []
                props = list((schema.get("properties") or {}).keys())
                return required[0] if required else (props[0] if props else None)
        return None

    def stop_strings(self, tools: list[dict] | None) -> list[str]:
        return [f"</{n}>" for n in tool_names(tools)]

    def call_openers(self, tools: list[dict] | None) -> list[str]:
        return [f"<{n}>" for n in tool_names(tools)]

    def template_kwargs(self, tools: list[dict] | None) -> dict:
        return {}

    def parse(self, text: str, tools: list[dict] | None, id_prefix: str) -> tuple[str | None, list]:
        names = tool_names(tools)
        if not names:
            return text, []
        pattern = re.compile(
            "<(" + "|".join(re.escape(n) for n in names) + r")>(.*?)</\1>", re.DOTALL
        )
        calls = []
        for m in pattern.finditer(text):
            param = self._param(tools, m.group(1))
            args = {param: m.group(2)} if param else {}
            calls.append(make_call(len(calls), f"{id_prefix}_{len(calls)}", m.group(1), args))
        if not calls:
            return text, []
        content = pattern.sub("", text).strip()
        return (content or None), calls

    def _call_text(self, call: dict, tools: list[dict] | None) -> str:
        fn = call["function"]
        args = fn.get("arguments") or "{}"
        args = json.loads(args) if isinstance(args, str) else args
        param = self._param(tools, fn["name"])
        body = args.get(param, "") if param else ""
        return f"<{fn['name']}>{body}</{fn['name']}>"

    def render(self, messages: list[dict], tools: list[dict] | None) -> list[dict]:
        out = []
        for m in messages:
            role = m.get("role")
            if role == "tool":
                content = self.result_template.format(content=text_of(m.get("content")))
                out.append({"role": self.tool_role, "content": content})
            elif role == "assistant" and m.get("tool_calls"):
                calls = "".join(self._call_text(c, tools) for c in m["tool_calls"])
                out.append({"role": "assistant", "content": text_of(m.get("content")) + calls})
            else:
                out.append(
                    {
                        "role": "system" if role == "developer" else role,
                        "content": text_of(m.get("content")),
                    }
                )
        return out


class HermesFormat:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the convention of Qwen2.5 and
    Hermes chat templates, which render ``tools`` and assistant ``tool_calls`` themselves."""

    _CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

    def stop_strings(self, tools: list[dict] | None) -> list[str]:
        return []

    def call_openers(self, tools: list[dict] | None) -> list[str]:
        return ["<tool_call>"] if tools else []

    def template_kwargs(self, tools: list[dict] | None) -> dict:
        return {"tools": tools} if tools else {}

    def parse(self, text: str, tools: list[dict] | None, id_prefix: str) -> tuple[str | None, list]:
        if not tools:
            return text, []
        calls = []
        for m in self._CALL.finditer(text):
            try:
                obj = json.loads(m.group(1))
                name, args = obj["name"], obj.get("arguments", {})
            except (ValueError, KeyError, TypeError):
                continue  # not a call: left in the content for the agent to see
            if not isinstance(args, dict):
                continue
            calls.append(make_call(len(calls), f"{id_prefix}_{len(calls)}", name, args))
        if not calls:
            return text, []
        content = self._CALL.sub("", text).strip()
        return (content or None), calls

    def render(self, messages: list[dict], tools: list[dict] | None) -> list[dict]:
        out = []
        for m in messages:
            msg = {"role": m.get("role"), "content": text_of(m.get("content"))}
            if m.get("tool_calls"):
                msg["tool_calls"] = [
                    {
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": json.loads(c["function"].get("arguments") or "{}"),
                        },
                    }
                    for c in m["tool_calls"]
                ]
            out.append(msg)
        return out
