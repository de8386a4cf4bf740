"""Agents written with the real frameworks (`pip install -e '.[agents]'`), pointed at the gateway
and nothing else: LangChain (`examples/langchain_agent`), the OpenAI Agents SDK in its default
Responses mode and in Chat Completions mode (`examples/agents_sdk`); and an agent calling the
policy with two system prompts (`planner_agent.py`), each conversation its own transition."""

from __future__ import annotations

import csv

import pytest

from agentrl.gateway import responses
from tests.envs.leaks import no_leaks
from tests.gateway.planner_agent import PLANNER
from tests.gateway.test_external_workers import make_suite, run, runner_for

# name -> (entry point, the API it calls)
FRAMEWORKS = {
    "langchain": ("examples.langchain_agent.agent:run", "chat"),
    "agents_sdk": ("examples.agents_sdk.agent:run", "responses"),
    "agents_sdk_chat": ("examples.agents_sdk.agent:run_chat_completions", "chat"),
}


@pytest.fixture
def served(monkeypatch):
    """The Responses requests the gateway answers (counted; chat completions are not)."""
    calls: list[dict] = []
    create = responses.create

    def counting(submit, body, *a, **kw):
        calls.append(body)
        return create(submit, body, *a, **kw)

    monkeypatch.setattr(responses, "create", counting)
    return calls


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_a_framework_agent_runs_unchanged_against_the_gateway(name, tokenizer, served):
    """Each example in one worker, the policy scripted: a calc call, a reply without an answer
    (the agent says so), the answer. The tool ran, the calls merged into one sequence, the
    reward is the agent's, on the API the framework calls; no request refused."""
    entry_point, api = FRAMEWORKS[name]
    with no_leaks():
        suite = make_suite(entry_point, workers=1, timeout_s=120)
        try:
            task = suite.tasks("train")[0]
            step = task.meta["steps"][0]
            replies = [
                f"<calc>{step['a']}{step['op']}{step['b']}</calc>",
                "I am not sure.",
                f"<answer>{task.answer}</answer>",
            ]
            runner = runner_for(suite, tokenizer, replies)
            (traj,) = run(runner, [task])
        finally:
            suite.close()
    assert traj.status == "ok", traj.error
    assert [t.info["tool"] for t in traj.turns] == ["calc", None, None]
    assert f"<result>{step['result']}</result>" in traj.turns[0].observation
    assert "error: call calc or give <answer>N</answer>" in traj.turns[1].observation
    assert traj.turns[-1].reward == 1.0
    m = runner.metrics()
    assert m["gateway/segments_per_rollout"] == 1.0 and m["gateway/calls_per_rollout"] == 3.0
    assert m["gateway/bad_requests"] == m["gateway/unknown_routes"] == 0
    assert len(served) == (3 if api == "responses" else 0)
    if api == "responses":  # the SDK resends the whole conversation, the tool's schema with it
        assert [b["tools"][0]["name"] for b in served] == ["calc"] * 3
        assert "previous_response_id" not in served[-1]


def test_a_planner_and_an_executor_are_two_transitions_each_with_the_reward(tokenizer):
    """planner_agent: plan (planner prompt), calc + answer (executor prompt), review (the
    planner's conversation continued after the executor's). Each rollout gives two sequences,
    the planner's (plan and review merged, though not consecutive calls) and the executor's,
    each ending with its own rollout's reward; every generated token is trained exactly once."""
    suite = make_suite("tests.gateway.planner_agent:run", workers=1, timeout_s=120)
    try:
        task = suite.tasks("train")[0]
        step = task.meta["steps"][0]
        plan = "Use calc once."
        replies = [
            plan,
            f"<calc>{step['a']}{step['op']}{step['b']}</calc>",
            f"<answer>{task.answer}</answer>",
            "OK",
        ]
        runner = runner_for(suite, tokenizer, replies * 2)
        trajs = run(runner, [task, task])
    finally:
        suite.close()
    engine = runner.engine
    decode = tokenizer.decode
    assert [t.status for t in trajs] == ["ok"] * 4
    for group, (rollout, reward) in enumerate((("rollout-0", 1.0), ("rollout-1", 1.1))):
        planner, executor = [t for t in trajs if t.turns[0].info["rollout"] == rollout]
        assert planner.group == executor.group == group
        assert PLANNER in decode(planner.token_ids[: planner.prompt_len])
        assert PLANNER not in decode(executor.token_ids)
        assert [t.action for t in planner.turns] == [plan, "OK"]
        assert [t.info["tool"] for t in executor.turns] == ["calc", None]
        assert f"Plan: {plan}" in decode(executor.token_ids[: executor.prompt_len])
        for t in (planner, executor):
            assert [x.reward for x in t.turns] == [0.0] * (len(t.turns) - 1) + [reward]
    trained = sum(sum(t.loss_mask) for t in trajs)
    assert trained == sum(len(g.token_ids) for g in engine.outputs)
    m = runner.metrics()
    assert m["gateway/segments_per_rollout"] == 2.0 and m["gateway/calls_per_rollout"] == 4.0
    assert m["gateway/bad_requests"] == 0


def _steps(tmp_path, run_name: str) -> list[dict]:
    with open(tmp_path / run_name / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("gateway/rollouts")]


# 2 RL steps of 2 tasks x 2 samples in 4 workers (the rollouts of a step at once), no validation:
# the fewest rollouts that still make groups
TRAIN = [
    "debug=smoke",
    "data.tasks_per_step=2",
    "algorithm.group_size=2",
    "callbacks.export=null",
    "validate_before_training=false",
    "+trainer.limit_val_batches=0",
    "env.workers=4",
    "env.timeout_s=300",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["langchain", "agents_sdk"])
def test_a_framework_agent_trains_through_the_gateway(name, warm_cfg, tmp_path, served):
    """2 RL steps of the warm-started tiny model with the LangChain / Agents SDK (Responses)
    example as the entry point: every rollout reported its reward, nothing was refused, the
    calls of a rollout merged into ~one sequence, on the framework's API."""
    from agentrl.train import run as train

    entry_point, api = FRAMEWORKS[name]
    with no_leaks():
        train(warm_cfg(*TRAIN, f"env.entry_point={entry_point}", run=name))
    steps = _steps(tmp_path, name)
    assert len(steps) == 2
    for r in steps:
        assert float(r["gateway/rollouts"]) == 4 and float(r["rollout/failed_episodes"]) == 0
        assert float(r["gateway/missing_rewards"]) == float(r["gateway/crashes"]) == 0
        assert r["reward/reported"] != ""
        assert float(r["gateway/bad_requests"]) == float(r["gateway/unknown_routes"]) == 0
        assert float(r["gateway/calls_per_rollout"]) >= 2
        # a sampled reply that re-tokenizes differently splits (as designed); broken merging
        # gives one segment per call (>= 2 here)
        assert float(r["gateway/segments_per_rollout"]) <= 1.25
    assert any(float(r["gateway/segments_per_rollout"]) == 1.0 for r in steps)
    assert (len(served) > 0) == (api == "responses")


@pytest.mark.slow
def test_a_planner_executor_agent_trains_each_conversation(warm_cfg, tmp_path, monkeypatch):
    """2 RL steps with planner_agent: the update gets every conversation of every rollout as its
    own sequence with the rollout's reward (the planner's with its own prompt) and trains on
    its tokens: the planner sequences' advantages are not zero and an update is applied."""
    from agentrl import rl_step
    from agentrl.train import run as train

    seen: list[list[tuple]] = []
    update = rl_step.update

    def spy(module, trajs, scored):
        adv = scored.advantages
        rows = adv if adv.dim() == 1 else adv.abs().amax(dim=1)
        seen.append(
            [
                (
                    t.turns[0].info["rollout"],
                    PLANNER in module.tokenizer.decode(t.token_ids[: t.prompt_len]),
                    t.reward,
                    sum(t.loss_mask),
                    float(a),
                )
                for t, a in zip(trajs, rows.tolist())
            ]
        )
        return update(module, trajs, scored)

    monkeypatch.setattr(rl_step, "update", spy)
    with no_leaks():
        train(warm_cfg(*TRAIN, "env.entry_point=tests.gateway.planner_agent:run", run="p"))
    steps = _steps(tmp_path, "p")
    assert len(steps) == 2 and len(seen) == 2
    for r, rows in zip(steps, seen):
        assert float(r["rollout/failed_episodes"]) == 0 and float(r["gateway/bad_requests"]) == 0
        # everything the rollout phase produced reached the update
        assert len(rows) == float(r["gateway/segments_per_rollout"]) * 4
        assert float(r["gateway/segments_per_rollout"]) >= 2 and r.get("loss/grad_norm")
        by_rollout: dict[str, list[tuple]] = {}
        for row in rows:
            by_rollout.setdefault(row[0], []).append(row)
        assert len(by_rollout) == 4
        for segs in by_rollout.values():
            assert [s[1] for s in segs].count(True) >= 1 and [s[1] for s in segs].count(False) >= 1
            assert len({s[2] for s in segs}) == 1  # the rollout's reward on each
            assert all(s[3] > 0 for s in segs)  # generated tokens to train on
        assert any(s[4] != 0 for s in rows if s[1])  # the planner's sequences have a signal
