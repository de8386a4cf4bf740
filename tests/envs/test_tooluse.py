"""Tests of the tooluse env: JSON tool calls, tools, the HTTP price service and its faults,
splits, oracle and verifier, resource release."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agentrl.envs.toolcalls import (
    ERR_FORMAT,
    ToolError,
    answer_action,
    calculator,
    parse_action,
    tool_call,
)
from agentrl.envs.tooluse.price_service import PriceService, fetch_price, price_of
from agentrl.envs.tooluse.suite import ToolUse, convert
from agentrl.utils.instantiate import instantiate
from tests.envs.leaks import no_leaks, port_closed

CONF = Path(__file__).resolve().parents[2] / "conf" / "env" / "tooluse.yaml"
SMALL = {"num_train": 100, "num_val": 40, "num_test": 40}


@pytest.fixture
def suite():
    with no_leaks():
        s = ToolUse(seed=0, **SMALL)
        yield s
        s.close()


def task_of(suite: ToolUse, family: str):
    return next(t for t in suite.tasks("train") if t.meta["family"] == family)


def play(suite: ToolUse, task, actions):
    env = suite.make()
    env.reset(task)
    out = []
    for a in actions:
        out.append(env.step(a))
        if out[-1][2]:
            break
    return env, out


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "text, kind, name, args",
    [
        (
            '<tool_call>{"name":"calc","arguments":{"expression":"1+2"}}</tool_call>',
            "tool_call",
            "calc",
            {"expression": "1+2"},
        ),
        (
            ' <tool_call>\n{"name": "price", "arguments": {"item": "nut"}}\n</tool_call> ',
            "tool_call",
            "price",
            {"item": "nut"},
        ),
        (
            '<tool_call>{"name":"lookup","arguments":"{\\"item\\":\\"nut\\"}"}</tool_call>',
            "tool_call",
            "lookup",
            {"item": "nut"},
        ),
        ('<tool_call>{"name":"calc"}</tool_call>', "tool_call", "calc", {}),
        ("<answer> 42 </answer>", "answer", None, {}),
    ],
)
def test_parse_valid(text, kind, name, args):
    act = parse_action(text)
    assert act.error is None
    assert (act.kind, act.name, act.arguments) == (kind, name, args)


@pytest.mark.parametrize(
    "text, message",
    [
        ("calc 1+2", ERR_FORMAT),
        ("<tool_call>{}</tool_call> trailing", ERR_FORMAT),
        ('<tool_call>{"name":"calc",</tool_call>', "not valid JSON"),
        ("<tool_call>[1, 2]</tool_call>", 'needs a JSON object with a "name"'),
        ('<tool_call>{"name": 3}</tool_call>', 'needs a JSON object with a "name"'),
        (
            '<tool_call>{"name":"calc","arguments":[1]}</tool_call>',
            '"arguments" must be a JSON object',
        ),
        ('<tool_call>{"name":"calc","arguments":{},"x":1}</tool_call>', "unexpected keys"),
        ("<answer>  </answer>", "empty answer"),
        ("<answer>" + "1" * 500 + "</answer>", "longer than"),
        ("<tool_call><tool_call>{}</tool_call>", ERR_FORMAT),
    ],
)
def test_parse_malformed(text, message):
    act = parse_action(text)
    assert act.error is not None and message in act.error
    assert act.error.startswith("error:")


def test_canonical_calls_parse_back():
    act = parse_action(tool_call("convert", value=3, **{"from": "kg", "to": "g"}))
    assert (act.name, act.arguments) == ("convert", {"value": 3, "from": "kg", "to": "g"})
    assert parse_action(answer_action(-7)).text == "-7"


@pytest.mark.parametrize(
    "action, message",
    [
        ('<tool_call>{"name":"weather","arguments":{}}</tool_call>', "unknown tool 'weather'"),
        ('<tool_call>{"name":"calc","arguments":{}}</tool_call>', "missing argument 'expression'"),
        ('<tool_call>{"name":"calc","arguments":{"expression":3}}</tool_call>', "must be a string"),
        (
            '<tool_call>{"name":"convert","arguments":{"value":"3","from":"kg","to":"g"}}</tool_call>',
            "must be a number",
        ),
        (
            '<tool_call>{"name":"convert","arguments":{"value":true,"from":"kg","to":"g"}}</tool_call>',
            "must be a number",
        ),
        (
            '<tool_call>{"name":"price","arguments":{"item":"nut","x":1}}</tool_call>',
            "unexpected argument 'x'",
        ),
        ("<calc>1+2</calc>", "expected <tool_call>"),
    ],
)
def test_bad_calls_are_invalid_observations(suite, action, message):
    env, [(obs, reward, done, info)] = play(suite, suite.tasks("train")[0], [action])
    assert message in obs and obs.startswith("error:")
    assert (reward, done, info["invalid"]) == (0.0, False, True)


@pytest.mark.parametrize(
    "action, message",
    [
        (
            '<tool_call>{"name":"calc","arguments":{"expression":"1/0"}}</tool_call>',
            "division by zero",
        ),
        (
            '<tool_call>{"name":"lookup","arguments":{"item":"gear","field":"stock"}}</tool_call>',
            "no item 'gear'",
        ),
        (
            '<tool_call>{"name":"lookup","arguments":{"item":"nut","field":"color"}}</tool_call>',
            "no field 'color'",
        ),
        (
            '<tool_call>{"name":"convert","arguments":{"value":1,"from":"kg","to":"m"}}</tool_call>',
            "cannot convert mass",
        ),
        ('<tool_call>{"name":"price","arguments":{"item":"gear"}}</tool_call>', "HTTP 404"),
    ],
)
def test_tool_errors_are_observations(suite, action, message):
    suite.service.settings.error_rate = suite.service.settings.timeout_rate = 0.0
    env, [(obs, reward, done, info)] = play(suite, suite.tasks("train")[0], [action])
    assert message in obs and obs.startswith("error:")
    assert not info["invalid"] and info["tool_error"] in ("tool", "http") and not done


# ------------------------------------------------------------------ tools
@pytest.mark.parametrize(
    "expr, value",
    [
        ("4*3", 12),
        ("( ( -9 - 6 ) - -( -3 * 4 ) ) * 2 / 2", -27),
        ("7/2", 3.5),
        ("7//2", 3),
        ("-5", -5),
    ],
)
def test_calculator(expr, value):
    assert calculator(expr) == value


@pytest.mark.parametrize(
    "expr",
    ["__import__('os')", "2**8", "a+1", "1e300*1e300", "9" * 20, "(", "[1]", "1 if 1 else 2"],
)
def test_calculator_refuses(expr):
    with pytest.raises(ToolError):
        calculator(expr)


def test_convert():
    assert convert(3, "kg", "g") == 3000
    assert convert(250, "cm", "m") == 2.5
    assert convert(2, "h", "min") == 120
    with pytest.raises(ToolError, match="unknown unit"):
        convert(1, "lb", "kg")


# ------------------------------------------------------------------ tasks, oracle, verifier
def test_splits_are_deterministic_and_disjoint():
    with (
        ToolUse(seed=3, **SMALL) as a,
        ToolUse(seed=3, **SMALL) as b,
        ToolUse(seed=4, **SMALL) as c,
    ):
        for split in ("train", "val", "test"):
            assert a.tasks(split) == b.tasks(split)
        assert a.tasks("val") != c.tasks("val")
        catalogs = [{t.meta["catalog"] for t in a.tasks(s)} for s in ("train", "val", "test")]
        assert sum(map(len, catalogs)) == len(set().union(*catalogs)) == 180
        assert {t.meta["family"] for t in a.tasks("train")} == {"weight", "length", "value", "cost"}
        with pytest.raises(ValueError, match="unknown split"):
            a.tasks("dev")


def test_oracle_solves_every_task_through_faults_and_verify_agrees():
    # 40% of price requests fail (HTTP 500 or held past the timeout): the oracle retries. A
    # healthy answer has 5 s, so a loaded machine cannot turn it into a timeout
    with (
        no_leaks(),
        ToolUse(
            seed=1, error_rate=0.3, timeout_rate=0.1, timeout_s=5.0, max_turns=20, **SMALL
        ) as s,
    ):
        rng = random.Random(0)
        faults = 0
        for task in s.tasks("val"):
            env, steps = play(s, task, s.oracle(task, rng))
            faults += sum(info["tool_error"] in ("http", "timeout") for _, _, _, info in steps)
            assert s.verify(task, env), env.render()
            assert steps[-1][1] == 1.0 and steps[-1][2]
            assert not any(info["invalid"] for *_, info in steps)
        assert faults > 0


def test_flawed_oracle_skips_the_converter_and_fails():
    with ToolUse(seed=0, skip_convert_prob=1.0, error_rate=0.0, timeout_rate=0.0, **SMALL) as s:
        rng = random.Random(0)
        for task in s.tasks("val"):
            env, steps = play(s, task, s.oracle(task, rng))
            converts = sum(info["tool"] == "convert" for *_, info in steps)
            skipped = task.meta["family"] in ("weight", "length")
            assert s.verify(task, env) is not skipped and converts == 0
        # a wrong answer ends the episode with reward 0, and verify says so
        env, steps = play(s, s.tasks("val")[0], [answer_action("nonsense")])
        assert steps[-1][1:3] == (0.0, True) and not s.verify(s.tasks("val")[0], env)


def test_turn_cap_and_done():
    with ToolUse(seed=0, max_turns=2, **SMALL) as s:
        env, steps = play(s, s.tasks("val")[0], ["junk", "junk", "junk"])
        assert len(steps) == 2 and steps[-1][2] and steps[-1][3]["truncated"]
        obs, *_ = env.step("<answer>1</answer>")
        assert obs == "error: episode is over"
        assert "truncated after 2 turns" in env.render()


# ------------------------------------------------------------------ the HTTP service
def test_latency_is_real():
    with no_leaks(), PriceService(0, ["nut"], latency_s=0.2) as svc:
        start = time.monotonic()
        assert fetch_price(svc.url, "nut", 5, 0, timeout_s=2.0) == price_of(0, 5, "nut")
        assert time.monotonic() - start >= 0.2


def test_http_500_is_an_observation_and_counted(suite):
    suite.service.settings.error_rate = 1.0
    task = task_of(suite, "cost")
    env, [(obs, _, done, info)] = play(suite, task, [tool_call("price", item=task.meta["item"])])
    assert obs == "error: price: HTTP 500 from the price service: internal server error"
    assert info["tool_error"] == "http" and not info["invalid"] and not done
    from agentrl.types import Trajectory, Turn

    traj = Trajectory(task, [], [], [], 0, turns=[Turn("a", obs, 0.0, (0, 0), info)])
    assert suite.metrics([traj])["env/tool_errors_http"] == 1.0


def test_timeout_is_an_observation_and_bounded():
    with no_leaks(), ToolUse(seed=0, timeout_s=0.2, **SMALL) as s:
        s.service.settings.timeout_rate = 1.0
        s.service.settings.error_rate = 0.0
        s.service.settings.hang_s = 3600.0  # held an hour: only the client's timeout ends it
        task = task_of(s, "cost")
        _, [(obs, _, _, info)] = play(s, task, [tool_call("price", item=task.meta["item"])])
        assert obs == "error: price: the price service timed out after 0.2 s"
        assert info["tool_error"] == "timeout"
        # the held response is still pending on the server: close wakes and joins it


def test_service_dying_mid_episode_then_restarted(suite):
    suite.service.settings.error_rate = suite.service.settings.timeout_rate = 0.0
    task = task_of(suite, "value")
    env = suite.make()
    env.reset(task)
    port = suite.service.port
    call = tool_call("price", item=task.meta["item"])
    assert env.step(call)[0].startswith("<tool_response>")
    suite.service.stop()  # the service dies mid-episode
    assert port_closed(port)
    obs, reward, done, info = env.step(call)
    assert obs.startswith("error: price: the price service is unreachable")
    assert info["tool_error"] == "unreachable" and not done
    env.step(answer_action(task.answer))
    assert suite.verify(task, env)  # the episode still ends normally
    suite.make()  # the next episode restarts it, counted
    assert suite.service.alive and suite.metrics([])["env/service_restarts_total"] == 1.0


def test_service_left_down_when_restart_is_off():
    with no_leaks(), ToolUse(seed=0, restart_service=False, **SMALL) as s:
        task = task_of(s, "cost")
        s.make()
        s.service.stop()
        _, [(obs, *_)] = play(s, task, [tool_call("price", item=task.meta["item"])])
        assert "unreachable" in obs and not s.service.alive


def test_close_releases_port_and_threads_even_with_a_held_request():
    with no_leaks():
        s = ToolUse(seed=0, timeout_s=0.1, **SMALL)
        s.service.settings.timeout_rate, s.service.settings.error_rate = 1.0, 0.0
        s.service.settings.hang_s = 3600.0  # held an hour: close() must wake them, not wait
        task = task_of(s, "cost")
        play(s, task, [tool_call("price", item=task.meta["item"])] * 2)
        port = s.service.port
        # s.close() twice: idempotent
        closing = threading.Thread(target=lambda: (s.close(), s.close()), daemon=True)
        closing.start()
        closing.join(timeout=60)
        assert not closing.is_alive(), "close() waited for the held requests"
        assert port_closed(port)


def test_leak_check_catches_a_server_left_running():
    svc = PriceService(0, ["nut"])
    with pytest.raises(AssertionError, match="left behind"), no_leaks(grace_s=0.2):
        svc.start()
    svc.stop()


def test_config_instantiates_with_code_defaults():
    cfg = OmegaConf.load(CONF)
    suite = instantiate(cfg, "env")
    try:
        assert suite.system_prompt == ToolUse(num_train=1, num_val=1, num_test=1).system_prompt
        assert suite.stop_strings == ["</tool_call>", "</answer>"]
    finally:
        suite.close()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"error_rate": 1.5}, "error_rate must be in"),
        ({"error_rate": 0.6, "timeout_rate": 0.5}, "must be < 1"),
        ({"families": ["weight", "nope"]}, "families must be"),
        ({"timeout_s": 0}, "timeout_s must be > 0"),
        ({"max_quantity": 1}, "max_quantity"),
    ],
)
def test_bad_config_values(override, message):
    with pytest.raises(ValueError, match=message):
        ToolUse(**{**SMALL, **override})


def test_same_seed_same_observations_under_faults():
    def transcript(seed):
        with ToolUse(seed=seed, error_rate=0.3, timeout_rate=0.1, timeout_s=5.0, **SMALL) as s:
            rng = random.Random(0)
            return [
                [obs for obs, *_ in play(s, t, s.oracle(t, rng))[1]] for t in s.tasks("val")[:15]
            ]

    assert transcript(2) == transcript(2)


@pytest.mark.parametrize("crash", [KeyboardInterrupt, RuntimeError])
def test_run_closes_the_service_when_training_crashes(make_cfg, monkeypatch, crash):
    from agentrl import train

    def crashing_fit(cfg, parts):
        parts["suite"].make()  # the price service is up
        assert parts["suite"].service.alive
        raise crash("simulated crash (Ctrl-C or a bug) in the middle of training")

    monkeypatch.setattr(train, "fit", crashing_fit)
    cfg = make_cfg("env=tooluse", "env.num_train=20", "env.num_val=5", "env.num_test=5")
    with no_leaks(), pytest.raises(crash):
        train.run(cfg)
