"""reward=api against the reference server over real loopback HTTP, with every fault.

No assertion depends on the machine's load: a healthy answer has 30 s (``reward``'s timeout), a
request held for a ``timeout`` fault is held an hour (until the server closes), and concurrency
is shown by requests that wait for each other, not by timing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest

from agentrl.rewards.api import ApiReward
from agentrl.rewards.base import RewardUnavailable, score_batch
from agentrl.rewards.server import ScoringServer, _Handler
from agentrl.types import Task, Trajectory, Turn


def scored(reward, trajs) -> dict:
    """score_batch's failure counts and the reward's own metrics, which the training step's
    collector (agentrl.metrics_channel) reads after scoring."""
    return {**score_batch(reward, trajs), **reward.metrics()}


def episode(i: int, answer: int, said: int) -> Trajectory:
    return Trajectory(
        task=Task(f"t{i}", f"Compute {answer}+0", answer),
        token_ids=[1],
        loss_mask=[0],
        logprobs=[0.0],
        prompt_len=1,
        turns=[Turn(f"<answer>{said}</answer>", "", 0.0, (0, 1), {})],
        success=said == answer,
    )


def batch(n=6):
    # even episodes answer right
    return [episode(i, i, i if i % 2 == 0 else i + 1) for i in range(n)]


# a request held for a timeout fault is held this long (close() releases it)
HOLD_S = 3600.0


def reward(url, **kw):
    defaults = dict(batch_size=2, timeout_s=30.0, max_retries=2, backoff_s=0.01)
    return ApiReward(url=url, **{**defaults, **kw})


class _Paired(_Handler):
    def _answer(self, srv, number):
        srv.pair.wait()  # until a second request is in flight with this one
        return super()._answer(srv, number)


class PairedServer(ScoringServer):
    """Answers requests two at a time: each waits (up to 60 s) for a second one in flight."""

    def __init__(self):
        super().__init__()
        self.RequestHandlerClass = _Paired
        self.pair = threading.Barrier(2, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scores_in_batches_with_a_cache():
    with ScoringServer() as srv:
        r = reward(srv.url)
        trajs = batch(6)
        counts = scored(r, trajs)
        assert counts["reward_errors"] == 0
        assert [t.reward for t in trajs] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
        assert trajs[0].reward_components["correct"] == 1.0
        assert srv.stats["requests"] == 3 and srv.stats["items"] == 6  # batch_size 2
        assert counts["reward/api_requests"] == 3
        again = batch(6)
        counts = scored(r, again)
        assert srv.stats["requests"] == 3  # all cached
        assert counts["reward/api_cache_hits"] == 6
        assert [t.reward for t in again] == [t.reward for t in trajs]


def test_concurrency_limit_is_respected():
    # the server answers only pairs: two requests in flight at once, or none answered
    with PairedServer() as srv:
        counts = scored(reward(srv.url, batch_size=1, max_concurrency=2, timeout_s=120), batch(6))
        assert counts["reward/api_retries"] == 0
        assert srv.stats["max_in_flight"] == 2
        assert srv.stats["requests"] == 6


@pytest.mark.parametrize("fault", ["http500", "malformed", "timeout", "reset"])
def test_transient_faults_are_retried(fault):
    # the first two requests fail; every batch then succeeds within its 2 retries (a request
    # held for the timeout fault is given up after 2 s; the others have the default 30 s)
    timeout = {"timeout_s": 2.0} if fault == "timeout" else {}
    with ScoringServer(fault=fault, fail_first=2, delay=HOLD_S) as srv:
        r = reward(srv.url, batch_size=6, max_concurrency=1, **timeout)
        trajs = batch(6)
        counts = scored(r, trajs)
        assert counts["reward_errors"] == 0
        assert counts["reward/api_retries"] == 2 and srv.stats["requests"] == 3
        assert [t.reward for t in trajs] == [1.0, 0.0] * 3


def test_slow_but_in_time_is_fine():
    with ScoringServer(fault="slow", delay=0.2) as srv:
        trajs = batch(2)
        counts = scored(reward(srv.url), trajs)
        assert counts["reward/api_retries"] == 0 and trajs[0].reward == 1.0


@pytest.mark.parametrize("fault", ["http500", "malformed", "timeout", "reset", "refused"])
def test_persistent_failure_policies(fault):
    # whatever the load, every request fails: held an hour, or answered with the fault
    srv = None if fault == "refused" else ScoringServer(fault=fault, delay=HOLD_S).start()
    url = f"http://127.0.0.1:{free_port()}/score" if srv is None else srv.url
    try:
        # drop: every episode failed and counted, nothing raised
        trajs = batch(4)
        counts = scored(reward(url, timeout_s=0.2, on_failure="drop"), trajs)
        assert counts["reward_errors"] == 4 and counts["reward/api_failed_episodes"] == 4
        assert all(t.status == "failed" and "attempts" in t.error for t in trajs)
        assert counts["reward/api_retries"] == 4  # 2 batches x 2 retries
        # default: the configured value
        trajs = batch(2)
        counts = scored(
            r := reward(url, timeout_s=0.2, on_failure="default", default_value=-1), trajs
        )
        assert counts["reward_errors"] == 0 and [t.reward for t in trajs] == [-1.0, -1.0]
        assert trajs[0].reward_components["api_default"] == 1.0
        assert r.metrics()["reward/api_failed_episodes"] == 2
        # stop: the one exception that crosses score_batch
        with pytest.raises(RewardUnavailable, match="attempts"):
            score_batch(reward(url, timeout_s=0.2, on_failure="stop"), batch(2))
    finally:
        if srv is not None:
            srv.close()


def test_client_errors_are_not_retried_and_key_comes_from_the_env(monkeypatch):
    with ScoringServer(require_key="s3cret") as srv:
        monkeypatch.delenv("MY_SCORER_KEY", raising=False)
        trajs = batch(2)
        counts = scored(reward(srv.url, auth_env="MY_SCORER_KEY"), trajs)
        assert counts["reward_errors"] == 2 and "HTTP 401" in trajs[0].error
        assert counts["reward/api_retries"] == 0
        monkeypatch.setenv("MY_SCORER_KEY", "s3cret")
        trajs = batch(2)
        assert score_batch(reward(srv.url, auth_env="MY_SCORER_KEY"), trajs)["reward_errors"] == 0
        assert srv.auth_seen[-1] == "Bearer s3cret"


def test_bad_config_values_are_one_line_errors():
    for kw, msg in [
        ({"url": "localhost:8000"}, "http://"),
        ({"on_failure": "retry"}, "on_failure"),
        ({"batch_size": 0}, "batch_size"),
        ({"timeout_s": 0}, "timeout_s"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ApiReward(**kw)


def test_server_command_line():
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentrl.rewards.server", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:")
        url = line.split()[-1]
        trajs = batch(2)
        assert score_batch(reward(url), trajs)["reward_errors"] == 0
        assert [t.reward for t in trajs] == [1.0, 0.0]
        import urllib.request

        stats = json.loads(urllib.request.urlopen(url.replace("/score", "/stats")).read())
        assert stats["requests"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_close_drops_a_held_request_at_once():
    """A request held for a timeout fault does not outlive the server: close() drops it."""
    srv = ScoringServer(fault="timeout", delay=HOLD_S).start()
    outcome: list[BaseException | dict] = []
    r = reward(srv.url, timeout_s=120, max_retries=0)
    client = threading.Thread(target=lambda: outcome.append(r.score_batch(batch(1))[0]))
    client.start()
    deadline = threading.Event()
    for _ in range(600):  # until the request is held (at most 60 s)
        with srv.lock:
            if srv.stats["in_flight"] == 1:
                break
        deadline.wait(0.1)
    srv.close()
    client.join(timeout=60)
    assert not client.is_alive(), "the held request outlived close()"
    assert isinstance(outcome[0], BaseException) and "cannot connect" in str(outcome[0])
