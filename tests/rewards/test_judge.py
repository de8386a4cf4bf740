"""reward=judge: robust parsing, unparseable answers counted, an OpenAI-compatible endpoint
(a small fake server over loopback HTTP), relative scoring, the local HF judge."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentrl.models.factory import TinyModel
from agentrl.rewards.base import score_batch
from agentrl.rewards.judge import JudgeReward, parse_group_scores, parse_score
from agentrl.types import Task, Trajectory, Turn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score: 7", 0.7),
        ("score:7", 0.7),
        ("The answer is right and tools were used well.\nScore: 9", 0.9),
        ("Score: 3\n...on reflection, Score: 8", 0.8),  # the last mention wins
        ("**Score:** 10", 1.0),
        ("Rating = 6.5", 0.65),
        ("Grade: 4/5", 0.8),  # rescaled from its own denominator
        ("I'd give it 3 out of 4", 0.75),
        ("7/10", 0.7),
        ('{"score": 2, "reason": "wrong answer"}', 0.2),
        ('reasoning... {"score": 5}', 0.5),
        ("8", 0.8),
        ("  6. ", 0.6),
        ("Score: 0", 0.0),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "great job!",
        "Score: 11",  # out of range
        "Score: -1",
        "12/10",
        "3/0",
        "Score: nan",
        "the agent computed 3*4=12 and then 12+2=14",  # numbers but no score
        '{"score": "high"}',
        None,
    ],
)
def test_unparseable(text):
    assert parse_score(text) is None


def scored(reward, trajs) -> dict:
    """score_batch's failure counts and the reward's own metrics, which the training step's
    collector (agentrl.metrics_channel) reads after scoring."""
    return {**score_batch(reward, trajs), **reward.metrics()}


def test_parse_with_another_range():
    assert parse_score("Score: 3", min_score=1, max_score=5) == pytest.approx(0.5)
    assert parse_score("Score: 0", min_score=1, max_score=5) is None


def test_parse_group_scores():
    text = "A: 7\nB: 2/10\n**C**: 9 (best)\nCandidate D - 5"
    got = parse_group_scores(text, ["A", "B", "C", "D", "E"])
    assert got == {"A": 0.7, "B": 0.2, "C": 0.9, "D": 0.5, "E": None}
    assert parse_group_scores("A: great, B: 4", ["A", "B"]) == {"A": None, "B": 0.4}


def episode(i: int, right: bool, group: int = 0) -> Trajectory:
    said = 6 if right else 7
    return Trajectory(
        task=Task(f"t{group}", "Compute 2*3", 6),
        token_ids=[1],
        loss_mask=[0],
        logprobs=[0.0],
        prompt_len=1,
        turns=[
            Turn("<calc>2*3</calc>", "<result>6</result>", 0.0, (0, 1), {}),
            Turn(f"<answer>{said}</answer>", "", float(right), (1, 2), {}),
        ],
        success=right,
        group=group,
    )


class FakeOpenAI(ThreadingHTTPServer):
    """POST /v1/chat/completions: 'Score: 9' for transcripts ending in <answer>6</answer>, a
    rambling unparseable reply for <answer>7</answer>; relative prompts get one line per
    candidate. Records the Authorization headers and request bodies."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _OpenAIHandler)
        self.auth, self.bodies = [], []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _OpenAIHandler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.auth.append(self.headers.get("Authorization"))
        self.server.bodies.append(body)
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        user = body["messages"][-1]["content"]
        if "Candidate A" in user:
            parts = user.split("Candidate ")[1:]
            lines = [f"{p[0]}: {9 if '<answer>6</answer>' in p else 1}" for p in parts]
            content = "\n".join(lines)
        elif "<answer>6</answer>" in user:
            content = "The agent used the calculator and answered correctly. Score: 9"
        else:
            content = "Hmm, hard to say what to think of this one."
        reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_openai_endpoint_with_unparseable_answers_counted(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "k-123")
    srv = FakeOpenAI()
    try:
        judge = JudgeReward(backend="openai", url=srv.url, model_name="m", auth_env="JUDGE_KEY")
        trajs = [episode(0, True), episode(1, False), episode(2, True)]
        counts = scored(judge, trajs)
        assert counts["reward_errors"] == 0
        assert [t.reward for t in trajs] == pytest.approx([0.9, 0.0, 0.9])
        assert counts["reward/judge_unparseable"] == 1 and counts["reward/judge_calls"] == 3
        assert trajs[1].reward_components["judge_unparseable"] == 1.0
        assert srv.auth == ["Bearer k-123"] * 3
        sent = srv.bodies[0]
        assert sent["model"] == "m" and sent["temperature"] == 0.0
        assert "Score: N" in sent["messages"][0]["content"]
        users = [b["messages"][1]["content"] for b in srv.bodies]
        assert any("Agent (turn 2): <answer>6</answer>" in u for u in users)

        # unparseable_value null: that episode fails (dropped, counted), the others stand
        drop = JudgeReward(backend="openai", url=srv.url, unparseable_value=None)
        trajs = [episode(0, True), episode(1, False)]
        counts = scored(drop, trajs)
        assert counts["reward_errors"] == 1 and trajs[1].status == "failed"

        # relative: both groups scored in one prompt each
        rel = JudgeReward(backend="openai", url=srv.url, relative=True)
        trajs = [
            episode(0, True, 0),
            episode(1, False, 0),
            episode(2, False, 1),
            episode(3, True, 1),
        ]
        counts = scored(rel, trajs)
        assert [t.reward for t in trajs] == pytest.approx([0.9, 0.1, 0.1, 0.9])
        assert counts["reward/judge_calls"] == 2
        assert "candidates A, B" in srv.bodies[-1]["messages"][0]["content"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_endpoint_down_fails_episodes_not_the_run():
    judge = JudgeReward(backend="openai", url="http://127.0.0.1:9/v1", max_retries=1, backoff_s=0)
    trajs = [episode(0, True)]
    counts = scored(judge, trajs)
    assert counts["reward_errors"] == 1 and "judge endpoint" in trajs[0].error
    assert counts["reward/judge_errors"] == 1


def test_local_judge_tiny_model_runs_and_counts_unparseable():
    """The tiny random model answers gibberish: every answer is counted unparseable and the
    episodes get unparseable_value; nothing raises."""
    judge = JudgeReward(
        backend="local",
        judge=TinyModel(
            hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
        ),
        max_new_tokens=8,
        unparseable_value=0.5,
    )
    trajs = [episode(0, True), episode(1, False)]
    counts = scored(judge, trajs)
    assert counts["reward_errors"] == 0
    assert counts["reward/judge_calls"] == 2
    n_bad = counts["reward/judge_unparseable"]
    assert sum(t.reward_components["judge_unparseable"] for t in trajs) == n_bad
    assert all(t.reward == 0.5 for t in trajs if t.reward_components["judge_unparseable"])


def test_bad_judge_config():
    with pytest.raises(ValueError, match="backend"):
        JudgeReward(backend="claude")
    with pytest.raises(ValueError, match="model spec"):
        JudgeReward(backend="local")
    with pytest.raises(ValueError, match="url"):
        JudgeReward(backend="openai")
    with pytest.raises(ValueError, match="max_score"):
        JudgeReward(backend="openai", url="http://x", min_score=5, max_score=5)


@pytest.mark.slow
def test_local_judge_smollm2_gives_parseable_scores(smollm2_models):
    """The real SmolLM2-135M-Instruct as a local judge (converted once a session)."""
    from agentrl.models.factory import SmolLM2GGUF

    spec = SmolLM2GGUF(str(smollm2_models))
    judge = JudgeReward(backend="local", judge=spec, max_new_tokens=4)
    trajs = [episode(0, True)]
    counts = scored(judge, trajs)
    assert counts["reward_errors"] == 0 and counts["reward/judge_unparseable"] == 0
    assert 0.0 <= trajs[0].reward <= 1.0
