"""Real streaming: text leaves as the HF engine generates it (both APIs), token-exactly equal to
the non-streamed answer, and a client that goes away mid-stream changes nothing else."""

from __future__ import annotations

import http.client
import json
import threading

import openai
import pytest
import torch

from agentrl.gateway.server import Gateway
from agentrl.gateway.streaming import TextStream
from agentrl.gateway.toolcalls import TagFormat
from agentrl.types import Task
from tests.gateway.conftest import CALC_TOOL, RecordingEngine

TASK = Task(id="t/0", prompt="Compute 2+3", answer=5)
SYSTEM = "Use <calc>A op B</calc> one step a turn, then <answer>N</answer>."
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Compute 2+3"}]


class GatedEngine(RecordingEngine):
    """The HF engine, held inside its decoding loop (in the token callback the gateway gave it)
    until ``release`` is set: once, at the first token that makes a row's text non-blank
    (``until_text``), else at the very first token. ``held`` is set while it waits, ``finished``
    once its ``generate`` returned."""

    def __init__(self, until_text: bool = True):
        super().__init__()
        self.until_text = until_text
        self.held, self.release, self.finished = (threading.Event() for _ in range(3))
        self.batches: list[int] = []

    def generate(self, prompts, params, generator=None, on_token=None):
        rows: dict[int, list[int]] = {}

        def gated(i, token_id, logprob):
            on_token(i, token_id, logprob)
            rows.setdefault(i, []).append(token_id)
            text = self.tokenizer.decode(rows[i], skip_special_tokens=True)
            if not self.release.is_set() and (text.strip() or not self.until_text):
                self.held.set()
                self.release.wait(120)  # never forever: a broken test fails, not hangs

        self.batches.append(len(prompts))
        outs = super().generate(prompts, params, generator, on_token=gated if on_token else None)
        self.finished.set()
        return outs


@pytest.fixture
def serve(tiny):
    made: list[Gateway] = []

    def make(engine, **kw):
        engine.bind(*tiny)
        fmt = TagFormat("user", "<result>{content}</result>")
        gw = Gateway(engine, tiny[1], fmt, max_tokens=24, **kw).start().serve_in_thread()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        if isinstance(gw.engine, GatedEngine):
            gw.engine.release.set()
        gw.stop()


def client_for(gw: Gateway, rollout: str | None = None) -> openai.OpenAI:
    url = gw.rollout_url(rollout) if rollout else gw.url + "/v1"
    return openai.OpenAI(base_url=url, api_key=gw.token, max_retries=0, timeout=60)


# ------------------------------------------------------------------------ the text, token by token
def _feed(tokenizer, text: str, openers, content: str | None = None) -> tuple[list, list]:
    """Stream ``text``'s tokens (then an end of sequence) through a TextStream; (the deltas sent
    before the end, those sent by ``finish(content)``)."""
    sent: list[str] = []
    stream = TextStream(
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        lambda delta, entries: sent.append(delta),
        openers,
        tokenizer.eos_token_id,
    )
    for i in tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]:
        stream.push(i, -0.5)
    early = list(sent)
    stream.finish(text if content is None else content)
    return early, sent[len(early) :]


def test_multibyte_characters_leave_whole_as_soon_as_complete(tokenizer):
    text = "héllo 🙂 wörld → ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # the tiny tokenizer splits these characters into bytes
    early, late = _feed(tokenizer, text, [])
    assert "".join(early) == text and late == []  # all of it before the end, token-exactly
    assert len(early) > 5 and not any("\ufffd" in d for d in early)


def test_text_before_a_tool_call_streams_the_call_waits(tokenizer):
    fmt = TagFormat()
    openers = fmt.call_openers([CALC_TOOL])
    text = "Let me add. <calc>2+3</calc>"
    content, calls = fmt.parse(text, [CALC_TOOL], "c")
    assert content == "Let me add." and calls
    early, late = _feed(tokenizer, text, openers, content)
    # up to the call, its trailing space held (the parse strips it); nothing of the call
    assert "".join(early) == "Let me add." and late == []
    # a turn that begins with whitespace: stripped if a call follows, so held to the end
    text = "  sure <calc>1+1</calc>"
    content = fmt.parse(text, [CALC_TOOL], "c")[0]
    early, late = _feed(tokenizer, text, openers, content)
    assert early == [] and "".join(late) == content == "sure"
    # what may begin a call is held; once it cannot, it is sent; if the turn ends there, at the end
    early, late = _feed(tokenizer, "a <cal b <ca", openers)
    assert "".join(early) == "a <cal b" and "".join(late) == " <ca"


# ------------------------------------------------------------------------ through the gateway
def test_chat_chunks_arrive_while_the_turn_is_generated(serve):
    engine = GatedEngine()
    gw = serve(engine)
    chunks = ask_stream(client_for(gw))
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    # the engine is still inside the generation of this very request
    assert engine.held.is_set() and not engine.finished.is_set()
    engine.release.set()
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason in ("stop", "length")


def test_responses_events_arrive_while_the_turn_is_generated(serve):
    engine = GatedEngine()
    gw = serve(engine)
    events = client_for(gw).responses.create(
        model="m", instructions=SYSTEM, input="Compute 2+3", stream=True, temperature=0
    )
    kinds = []
    for event in events:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            break
    assert engine.held.is_set() and not engine.finished.is_set()
    engine.release.set()
    kinds += [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")


def ask_stream(client, **kw):
    return client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, temperature=0, **kw
    )


def _seeded(gw: Gateway) -> None:
    """Every call samples from the same seed: a streamed and a plain call draw the same tokens
    (seed 5: a text with a two-byte character that the tiny tokenizer splits into two tokens)."""
    gw.generator_fn = lambda rollout, k: torch.Generator().manual_seed(5)


def test_streamed_chat_equals_the_plain_answer_and_record(serve):
    engine = RecordingEngine()
    gw = serve(engine)
    _seeded(gw)
    plain, streamed = gw.open_rollout("plain", TASK), gw.open_rollout("streamed", TASK)
    kw = {"temperature": 1.0, "logprobs": True}
    reply = client_for(gw, "plain").chat.completions.create(model="m", messages=MESSAGES, **kw)
    chunks = list(
        client_for(gw, "streamed").chat.completions.create(
            model="m", messages=MESSAGES, stream=True, **kw
        )
    )
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(deltas) == reply.choices[0].message.content
    assert len(deltas) > 1
    entries = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in entries] == [
        (e.token, e.logprob) for e in reply.choices[0].logprobs.content
    ]
    (a,), (b,) = plain.calls, streamed.calls
    assert (a.prompt_ids, a.response_ids, a.logprobs, a.text) == (
        b.prompt_ids,
        b.response_ids,
        b.logprobs,
        b.text,
    )
    assert [s[1] for s in engine.seen] == [a.response_ids, b.response_ids]


def test_streamed_response_equals_the_plain_answer_and_record(serve):
    gw = serve(RecordingEngine())
    _seeded(gw)
    plain, streamed = gw.open_rollout("plain", TASK), gw.open_rollout("streamed", TASK)
    kw = {"model": "m", "instructions": SYSTEM, "input": "Compute 2+3", "temperature": 1.0}
    response = client_for(gw, "plain").responses.create(**kw)
    events = list(client_for(gw, "streamed").responses.create(stream=True, **kw))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == response.output_text and len(deltas) > 1
    assert events[-1].response.output_text == response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    (a,), (b,) = plain.calls, streamed.calls
    assert (a.prompt_ids, a.response_ids, a.logprobs) == (b.prompt_ids, b.response_ids, b.logprobs)


def _post(gw: Gateway, rollout: str, body: dict) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(gw.host, gw.port, timeout=60)
    conn.request(
        "POST",
        f"/rollouts/{rollout}/v1/chat/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {gw.token}", "Content-Type": "application/json"},
    )
    return conn


def test_a_client_leaving_mid_stream_breaks_neither_the_batch_nor_the_record(serve):
    engine = GatedEngine(until_text=False)
    # the two requests are generated in one batch (the batch waits for the second one)
    gw = serve(engine, max_batch_size=2, batch_window_s=60)
    for rid in ("left", "stayed"):
        gw.open_rollout(rid, TASK)
    body = {"messages": MESSAGES, "stream": True, "temperature": 0}
    leaving, staying = _post(gw, "left", body), _post(gw, "stayed", body)
    reply = leaving.getresponse()
    assert reply.status == 200 and reply.readline().startswith(b"data: ")  # the role chunk
    assert engine.held.wait(60) and not engine.finished.is_set()  # generation is under way
    leaving.sock.shutdown(2)
    leaving.close()
    engine.release.set()
    answer = staying.getresponse()
    lines = [ln for ln in answer.read().decode().splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, (ln[6:] for ln in lines[:-1]))
        if c["choices"]
    )
    assert engine.batches == [2] and engine.finished.is_set()
    # both calls recorded, exactly what the engine generated
    for rid in ("left", "stayed"):
        (call,) = gw.rollouts[rid].calls
        assert (call.prompt_ids, call.response_ids, call.logprobs) in engine.seen
    assert text == gw.rollouts["stayed"].calls[0].text
    # and the gateway goes on serving
    gw.batch_window_s = 0.01
    again = client_for(gw).chat.completions.create(model="m", messages=MESSAGES, temperature=0)
    assert again.choices[0].finish_reason in ("stop", "length")
