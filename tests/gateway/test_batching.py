"""The gateway's batching for a runner that knows its rollouts (``Gateway.pump_due``): a turn of
every running rollout is one engine call, as the in-process env generates its episodes."""

from __future__ import annotations

import select
import threading

import pytest

from agentrl.gateway.server import Gateway
from tests.gateway.conftest import ScriptedEngine

BODY = {"messages": [{"role": "user", "content": "Compute 2+3"}]}


@pytest.fixture
def gateway(tokenizer):
    made: list[Gateway] = []

    def make(**kw) -> tuple[ScriptedEngine, Gateway]:
        engine = ScriptedEngine(tokenizer, ["<answer>5</answer>"])
        made.append(Gateway(engine, tokenizer, **kw).start())
        return engine, made[-1]

    yield make
    for gw in made:
        gw.stop()


def ask(gw: Gateway, n: int, answers: list) -> list[threading.Thread]:
    """``n`` requests, each from its own thread (as concurrent agents send them)."""
    threads = [
        threading.Thread(target=lambda: answers.append(gw.submit(dict(BODY), None)))
        for _ in range(n)
    ]
    for t in threads:
        t.start()
    return threads


def test_the_expected_requests_are_one_engine_call_before_the_window_ends(gateway):
    engine, gw = gateway(max_batch_size=8, batch_window_s=600)
    assert gw.pump_due(3) is None  # nothing queued
    answers: list = []
    threads: list[threading.Thread] = []
    for n in (1, 2, 3):  # the 3 running rollouts' requests, one after the other
        threads += ask(gw, 1, answers)
        assert select.select([gw.fileno()], [], [], 60)[0] == [gw.fileno()]  # it is queued
        due = gw.pump_due(3)
        if n < 3:  # waits for the others (the window is far)
            assert due > 0 and engine.batches == []
    assert due == 0.0  # the third: all 3 served at once
    for t in threads:
        t.join(60)
    assert engine.batches == [3] and len(answers) == 3
    assert answers[0]["choices"][0]["message"]["content"] == "<answer>5</answer>"


def test_fewer_requests_are_served_once_the_window_passed(gateway):
    engine, gw = gateway(max_batch_size=8, batch_window_s=0)
    answers: list = []
    (thread,) = ask(gw, 1, answers)
    select.select([gw.fileno()], [], [], 60)
    assert gw.pump_due(3) == 0.0  # 1 of 3 expected, but it has waited its window (0 s)
    thread.join(60)
    assert engine.batches == [1] and len(answers) == 1


def test_the_file_is_readable_while_a_request_is_new(gateway):
    engine, gw = gateway(max_batch_size=8, batch_window_s=600)
    assert select.select([gw.fileno()], [], [], 0)[0] == []
    answers: list = []
    threads = ask(gw, 1, answers)
    assert select.select([gw.fileno()], [], [], 60)[0] == [gw.fileno()]
    assert gw.pump_due(2) > 0  # waits for the second; the first is now read
    assert select.select([gw.fileno()], [], [], 0)[0] == []
    threads += ask(gw, 1, answers)
    assert select.select([gw.fileno()], [], [], 60)[0] == [gw.fileno()]
    while gw.pump_due(2) != 0.0:  # the second may still be on its way to the queue
        select.select([gw.fileno()], [], [], 60)
    for t in threads:
        t.join(60)
    assert engine.batches == [2] and len(answers) == 2


def test_every_rollout_of_a_step_may_connect_at_once(gateway):
    """The listen backlog holds a step's connections (socketserver's default, 5, would drop the
    SYNs of 64 agents connecting together: each then waits a second or more to retry)."""
    _, gw = gateway()
    assert gw._server.request_queue_size >= 64
