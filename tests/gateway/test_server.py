"""The gateway against the real ``openai`` client: completions, streaming, tool calls, auth,
token-exact recording."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request

import openai
import pytest
import torch

from agentrl.gateway.handler import is_loopback
from agentrl.gateway.server import Gateway
from agentrl.gateway.toolcalls import HermesFormat, TagFormat
from agentrl.types import Task
from tests.gateway.conftest import CALC_TOOL, RecordingEngine, ScriptedEngine

TASK = Task(id="t/0", prompt="Compute 2+3", answer=5)
SYSTEM = "Use <calc>A op B</calc> one step a turn, then <answer>N</answer>."


def serve(engine, tokenizer, **kw) -> Gateway:
    fmt = kw.pop("tool_format", TagFormat("user", "<result>{content}</result>"))
    return Gateway(engine, tokenizer, fmt, max_tokens=24, **kw).start().serve_in_thread()


@pytest.fixture
def scripted(tokenizer):
    def make(replies, **kw):
        engine = ScriptedEngine(tokenizer, replies)
        gw = serve(engine, tokenizer, **kw)
        made.append(gw)
        return engine, gw

    made: list[Gateway] = []
    yield make
    for gw in made:
        gw.stop()


def client_for(gw: Gateway, rollout: str | None = None, key: str | None = None) -> openai.OpenAI:
    url = gw.rollout_url(rollout) if rollout else gw.url + "/v1"
    return openai.OpenAI(base_url=url, api_key=key or gw.token, max_retries=0, timeout=60)


def ask(client, content="Compute 2+3", **kw):
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
    return client.chat.completions.create(model="agentrl-policy", messages=msgs, **kw)


def test_models_and_plain_completion(scripted):
    _, gw = scripted(["<answer>5</answer>"])
    client = client_for(gw)
    assert [m.id for m in client.models.list().data] == ["agentrl-policy"]
    reply = ask(client)
    assert reply.choices[0].message.content == "<answer>5</answer>"
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0


def test_tool_calls_parsed_into_openai_form(scripted):
    _, gw = scripted(["<calc>2+3</calc>"])
    reply = ask(client_for(gw), tools=[CALC_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "calc"
    assert json.loads(call.function.arguments) == {"expression": "2+3"}
    # without tools declared the same text is plain content
    reply = ask(client_for(gw))
    assert reply.choices[0].message.content == "<calc>2+3</calc>"


def test_streaming_content_and_tool_calls(scripted):
    _, gw = scripted(["<answer>5</answer>", "<calc>2+3</calc>"])
    client = client_for(gw)
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "<answer>5</answer>"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    chunks = list(ask(client, stream=True, tools=[CALC_TOOL]))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [
        ("calc", {"expression": "2+3"})
    ]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_missing_or_wrong_token_is_401_and_never_logged(scripted, caplog):
    _, gw = scripted(["<answer>5</answer>"])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(openai.AuthenticationError):
        ask(client_for(gw, key="wrong-token"))
    with pytest.raises(openai.AuthenticationError):
        client_for(gw, key="wrong-token").models.list()
    req = urllib.request.Request(gw.url + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    ask(client_for(gw))  # the right token works
    assert gw.counters["unauthorized"] == 3
    assert gw.token not in caplog.text


def _seen_from(gw: Gateway, address: str) -> None:
    """Every connection the gateway accepts from now on looks as if it came from ``address``
    (the real socket, another peer address: what a request from another machine looks like)."""
    real = gw._server.get_request
    gw._server.get_request = lambda: (real()[0], (address, 40000))


def test_is_loopback():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "10.1.2.3", "203.0.113.7", "::", "example.com", ""):
        assert not is_loopback(host), host


def test_non_local_binding_refused_by_default(tokenizer):
    with pytest.raises(ValueError, match="not a loopback address"):
        Gateway(ScriptedEngine(tokenizer, ["x"]), tokenizer, host="0.0.0.0")


def test_a_non_local_peer_gets_403_unless_remote_is_allowed(scripted):
    """The peer is checked before anything else: a non-loopback peer is refused even with the
    right token, counted as forbidden, and nothing is generated; ``allow_remote`` (with a
    non-loopback bind address, allowed only on purpose) serves it."""
    engine, gw = scripted(["<answer>5</answer>"])
    _seen_from(gw, "203.0.113.7")
    with pytest.raises(openai.PermissionDeniedError, match="only local connections"):
        ask(client_for(gw))
    assert gw.counters["forbidden"] == 1 and gw.counters["requests"] == 0
    assert engine.prompts == []
    engine, gw = scripted(["<answer>5</answer>"], host="0.0.0.0", allow_remote=True)
    _seen_from(gw, "203.0.113.7")
    assert ask(client_for(gw)).choices[0].message.content == "<answer>5</answer>"
    assert gw.counters["forbidden"] == 0 and len(engine.prompts) == 1


def test_rollout_attribution_by_path_and_header_and_unknown_rollout(scripted):
    engine, gw = scripted(["<answer>5</answer>"])
    a, b = gw.open_rollout("rollout-0", TASK), gw.open_rollout("rollout-1", TASK)
    ask(client_for(gw, "rollout-0"))
    header = openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=gw.token,
        default_headers={"X-AgentRL-Rollout": "rollout-1"},
        max_retries=0,
    )
    ask(header)
    ask(header)
    assert len(a.calls) == 1 and len(b.calls) == 2
    with pytest.raises(openai.NotFoundError):
        ask(client_for(gw, "rollout-9"))


def test_reward_endpoint_validates(scripted):
    _, gw = scripted(["x"])
    rec = gw.open_rollout("rollout-0", TASK)

    def post(body, token=rec.token):  # the rollout's own token (its program's)
        req = urllib.request.Request(
            gw.url + "/rollouts/rollout-0/reward",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert post({"reward": 1.0}, token="nope") == 401
    assert rec.reward is None
    assert post({"reward": "high"}) == 400
    assert post({"reward": float("nan")}) == 400
    assert post({"reward": 0.5, "success": True}) == 200
    assert (rec.reward, rec.success) == (0.5, True)


def test_recording_is_token_exact_with_the_real_engine(tiny):
    """Recorded prompt ids are the template's tokens (tokenized once) and exactly what the engine
    saw; response ids and logprobs are exactly what it produced; the logprobs match a forward
    pass of the model over prompt + response."""
    model, tok = tiny
    engine = RecordingEngine()
    engine.bind(model, tok)
    gw = serve(engine, tok)
    try:
        rec = gw.open_rollout("rollout-0", TASK)
        reply = ask(client_for(gw, "rollout-0"), temperature=1.0, max_tokens=12, logprobs=True)
    finally:
        gw.stop()
    (call,) = rec.calls
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Compute 2+3"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert call.prompt_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert engine.seen == [(call.prompt_ids, call.response_ids, call.logprobs)]
    assert 0 < len(call.response_ids) <= 12
    returned = [c.logprob for c in reply.choices[0].logprobs.content]
    assert returned == pytest.approx(call.logprobs)
    ids = torch.tensor([call.prompt_ids + call.response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    start = len(call.prompt_ids)
    expected = [float(logp[start - 1 + i, t]) for i, t in enumerate(call.response_ids)]
    assert call.logprobs == pytest.approx(expected, abs=1e-4)


def test_consecutive_calls_merge_through_the_client(scripted):
    """The agent sends back the assistant's tool call and the tool result: the second prompt
    extends the first prompt + response, so the rollout is one sequence."""
    engine, gw = scripted(["<calc>2+3</calc>", "<answer>5</answer>"])
    rec = gw.open_rollout("rollout-0", TASK)
    client = client_for(gw, "rollout-0")
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Compute 2+3"}]
    first = client.chat.completions.create(model="m", messages=msgs, tools=[CALC_TOOL])
    msg = first.choices[0].message
    msgs.append(msg.model_dump(exclude_none=True))
    msgs.append({"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "5"})
    client.chat.completions.create(model="m", messages=msgs, tools=[CALC_TOOL])
    from agentrl.gateway.record import segments

    (seg,) = segments(rec.calls)
    c0, c1 = rec.calls
    assert seg.token_ids == c1.prompt_ids + c1.response_ids
    between = c1.prompt_ids[len(c0.prompt_ids) + len(c0.response_ids) :]
    assert "<result>5</result>" in engine.tokenizer.decode(between)
    mask = [0] * len(c0.prompt_ids) + [1] * len(c0.response_ids) + [0] * len(between)
    assert seg.loss_mask == mask + [1] * len(c1.response_ids)


def test_hermes_format_parses_json_tool_calls():
    fmt = HermesFormat()
    text = 'ok <tool_call>{"name": "calc", "arguments": {"expression": "1+2"}}</tool_call>'
    content, calls = fmt.parse(text, [CALC_TOOL], "c")
    assert content == "ok"
    assert calls[0]["function"]["name"] == "calc"
    assert json.loads(calls[0]["function"]["arguments"]) == {"expression": "1+2"}
    # malformed JSON stays content
    assert fmt.parse("<tool_call>{oops</tool_call>", [CALC_TOOL], "c")[1] == []
    rendered = fmt.render(
        [{"role": "assistant", "content": None, "tool_calls": calls}], [CALC_TOOL]
    )
    assert rendered[0]["tool_calls"][0]["function"]["arguments"] == {"expression": "1+2"}


def test_bad_requests_get_400_and_stop_frees_the_port(scripted):
    _, gw = scripted(["x"])
    client = client_for(gw)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[])
    with pytest.raises(openai.BadRequestError):
        ask(client, max_tokens=0)
    port = gw.port
    gw.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
