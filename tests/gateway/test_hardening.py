"""The gateway against hostile or broken clients, over real sockets: the body is read only after
the peer and the token are checked and only up to a cap, one response per request, deep JSON is a
400, rewards are bounded, come from the rollout's own program and are taken once."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from agentrl.gateway import handler as handler_mod
from agentrl.gateway.server import Gateway
from agentrl.gateway.toolcalls import TagFormat
from agentrl.types import Task
from tests.gateway.conftest import ScriptedEngine

TASK = Task(id="t/0", prompt="Compute 2+3", answer=5)
MIB = 2**20


@pytest.fixture
def serve(tokenizer):
    made: list[Gateway] = []

    def make(**kw) -> Gateway:
        engine = ScriptedEngine(tokenizer, ["<answer>5</answer>"])
        fmt = TagFormat("user", "<result>{content}</result>")
        gw = Gateway(engine, tokenizer, fmt, max_tokens=24, **kw).start().serve_in_thread()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


def exchange(gw: Gateway, data: bytes, end_input: bool = True, timeout: float = 10) -> bytes:
    """Send raw bytes, then read until the server closes the connection. end_input: half-close
    our side after sending (else the server sees a client still holding the rest of its body)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        s.sendall(data)
        if end_input:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    """Every HTTP response in ``data``: (status, headers lower-cased, body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        data = rest[n:]
    return out


def request(path: str, headers: dict[str, str], body: bytes = b"", method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def one_json_error(data: bytes) -> tuple[int, dict]:
    """Exactly one response, JSON, in OpenAI's error shape; its status and error object."""
    (resp,) = responses(data)
    status, headers, body = resp
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)["error"]


def post(gw: Gateway, path: str, body, token: str | None, headers=None) -> tuple[int, dict]:
    """One POST through http.client; status and the JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, body=data, headers=hdrs)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_token_is_checked_before_the_body_is_read(serve):
    """A client declaring a body it never sends gets its 401 at once: nothing was waited for."""
    gw = serve()
    for length in (4 * MIB, 64 * MIB, -1):
        data = exchange(
            gw,
            request("/v1/chat/completions", {"Content-Length": str(length)}),
            end_input=False,
        )
        status, err = one_json_error(data)
        assert status == 401 and err["type"] == "authentication_error"
    assert gw.counters["unauthorized"] == 3


def test_100_continue_only_once_the_body_is_wanted(serve):
    """``Expect: 100-continue`` (curl, over 1 MiB): no token, no invitation to send the body."""
    gw = serve()
    head = request("/v1/chat/completions", {"Content-Length": "64", "Expect": "100-continue"})
    status, _ = one_json_error(exchange(gw, head, end_input=False))
    assert status == 401
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {
        "Authorization": f"Bearer {gw.token}",
        "Content-Length": str(len(body)),
        "Expect": "100-continue",
        "Connection": "close",
    }
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
        s.sendall(request("/v1/chat/completions", headers))
        assert s.recv(4096).startswith(b"HTTP/1.1 100")
        s.sendall(body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    ((status, _, answer),) = responses(data)
    assert status == 200 and json.loads(answer)["object"] == "chat.completion"


def test_non_local_peer_is_refused_before_the_body_is_read(serve, monkeypatch):
    gw = serve()
    monkeypatch.setattr(handler_mod, "is_loopback", lambda host: False)
    headers = {"Authorization": f"Bearer {gw.token}", "Content-Length": str(4 * MIB)}
    data = exchange(gw, request("/v1/chat/completions", headers), end_input=False)
    status, err = one_json_error(data)
    assert status == 403 and err["type"] == "permission_error"
    assert gw.counters["forbidden"] == 1


def test_body_over_the_cap_is_413_unread_and_the_cap_is_configurable(serve):
    assert serve().max_body_bytes == 8 * MIB  # the default
    gw = serve(max_body_bytes=1024)
    headers = {"Authorization": f"Bearer {gw.token}", "Content-Length": "2048"}
    data = exchange(gw, request("/v1/chat/completions", headers), end_input=False)
    status, _ = one_json_error(data)
    assert status == 413 and gw.counters["too_large"] == 1
    # under the cap is served
    msgs = [{"role": "user", "content": "hi"}]
    status, reply = post(gw, "/v1/chat/completions", {"messages": msgs}, gw.token)
    assert status == 200 and reply["choices"][0]["message"]["content"] == "<answer>5</answer>"
    with pytest.raises(ValueError, match="max_body_bytes"):
        Gateway(None, None, max_body_bytes=0)


@pytest.mark.parametrize("length", ["abc", "-1", "+16", "1_6", "16, 16", ""])
def test_bad_content_length_gets_one_json_400(serve, length):
    """The body that follows is never parsed as a next request (no second, HTML error page)."""
    gw = serve()
    body = b'{"messages": []}'
    headers = {"Authorization": f"Bearer {gw.token}", "Content-Length": length}
    status, err = one_json_error(exchange(gw, request("/v1/chat/completions", headers, body)))
    assert status == 400 and "Content-Length" in err["message"]


def test_chunked_body_and_malformed_request_lines_get_one_json_error(serve):
    gw = serve()
    headers = {"Authorization": f"Bearer {gw.token}", "Transfer-Encoding": "chunked"}
    chunked = b'10\r\n{"messages": []}\r\n0\r\n\r\n'
    status, _ = one_json_error(exchange(gw, request("/v1/chat/completions", headers, chunked)))
    assert status == 411
    status, _ = one_json_error(exchange(gw, b"NONSENSE\r\n\r\n"))
    assert status == 400


def test_deeply_nested_json_is_a_400_not_a_dropped_connection(serve, capsys):
    gw = serve()
    for deep in (b"[" * 100_000, b'{"messages": ' + b'{"a": ' * 50_000):
        assert post(gw, "/v1/chat/completions", deep, None)[0] == 401  # no token: not parsed
        status, answer = post(gw, "/v1/chat/completions", deep, gw.token)
        assert status == 400 and "nested" in answer["error"]["message"]
    assert gw.counters["bad_requests"] == 2
    # the server still serves
    msgs = [{"role": "user", "content": "hi"}]
    assert post(gw, "/v1/chat/completions", {"messages": msgs}, gw.token)[0] == 200
    assert "Traceback" not in capsys.readouterr().err


def test_rewards_outside_the_range_are_refused_and_counted(serve):
    gw = serve()
    rec = gw.open_rollout("rollout-0", TASK)
    path = "/rollouts/rollout-0/reward"
    for bad in (b'{"reward": 1e300}', b'{"reward": -1e300}', b'{"reward": 1e400}'):
        status, answer = post(gw, path, bad, rec.token)
        assert status == 400 and "reward" in answer["error"]["message"]
    assert rec.reward is None and gw.counters["bad_rewards"] == 3
    assert post(gw, path, {"reward": 1000.0}, rec.token)[0] == 200  # the default range's edge
    assert rec.reward == 1000.0
    # the range is configurable
    gw = serve(min_reward=0.0, max_reward=1.0)
    rec = gw.open_rollout("rollout-0", TASK)
    assert post(gw, path, {"reward": 1.5}, rec.token)[0] == 400
    assert post(gw, path, {"reward": -0.1}, rec.token)[0] == 400
    assert post(gw, path, {"reward": 1.0}, rec.token)[0] == 200
    assert gw.counters["bad_rewards"] == 2
    with pytest.raises(ValueError, match="reward"):
        Gateway(None, None, min_reward=1.0, max_reward=0.0)
    with pytest.raises(ValueError, match="reward"):
        Gateway(None, None, max_reward=float("inf"))


def test_a_reward_comes_from_its_own_rollout_once(serve):
    gw = serve()
    a, b = gw.open_rollout("rollout-0", TASK), gw.open_rollout("rollout-1", TASK)
    assert len({a.token, b.token, gw.token}) == 3
    path = "/rollouts/rollout-0/reward"
    # another rollout's program, or the run's token: refused
    status, answer = post(gw, path, {"reward": 1.0}, b.token)
    assert status == 403 and answer["error"]["type"] == "permission_error"
    assert post(gw, path, {"reward": 1.0}, gw.token)[0] == 403
    assert gw.counters["forbidden"] == 2
    # only on the rollout's own path (the attribution header does not make a reward route)
    hdr = {"X-AgentRL-Rollout": "rollout-0"}
    assert post(gw, "/reward", {"reward": 1.0}, a.token, hdr)[0] == 404
    assert post(gw, "/v1/reward", {"reward": 1.0}, a.token, hdr)[0] == 404
    assert post(gw, "/rollouts/rollout-1/reward", {"reward": 1.0}, b.token, hdr)[0] == 400
    assert a.reward is None and b.reward is None
    # its own program, once
    assert post(gw, path, {"reward": 0.5, "success": True}, a.token)[0] == 200
    status, answer = post(gw, path, {"reward": 1.0}, a.token)
    assert status == 409 and "already" in answer["error"]["message"]
    assert (a.reward, a.success) == (0.5, True) and gw.counters["duplicate_rewards"] == 1
    # a rollout's token serves its own completions (by path, or without one), never another's
    msgs = {"messages": [{"role": "user", "content": "hi"}]}
    assert post(gw, "/rollouts/rollout-0/v1/chat/completions", msgs, a.token)[0] == 200
    assert post(gw, "/v1/chat/completions", msgs, a.token)[0] == 200
    assert post(gw, "/rollouts/rollout-1/v1/chat/completions", msgs, a.token)[0] == 403
    assert (
        post(gw, "/v1/chat/completions", msgs, a.token, {"X-AgentRL-Rollout": "rollout-1"})[0]
        == 403
    )
    assert len(a.calls) == 2 and not b.calls
    # a closed rollout's token is dead
    gw.close_rollout("rollout-0")
    assert post(gw, "/v1/chat/completions", msgs, a.token)[0] == 401
