"""The multi-turn token contract: episodes are extended token by token, observations masked."""

import pytest
import torch

from agentrl.envs.toolcalc import ToolCalc
from agentrl.models.tokenizer import load_tiny_tokenizer
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.engine import Generation
from agentrl.rollout.runner import EpisodeRunner
from agentrl.types import Task


class ScriptedEngine:
    """Plays back fixed actions (as token ids, each ending in end-of-turn) and records prompts."""

    def __init__(self, chat: ChatFormat, actions: list[str]):
        self.chat = chat
        self.actions = actions
        self.prompts: list[list[int]] = []

    def generate(self, prompts, params, generator=None):
        out = []
        for p in prompts:
            self.prompts.append(list(p))
            turn = sum(1 for q in self.prompts if q[:10] == p[:10]) - 1
            ids = self.chat.action_ids(self.actions[min(turn, len(self.actions) - 1)])
            out.append(Generation(ids, [-0.5] * len(ids), "stop"))
        return out


@pytest.fixture
def setup():
    tok = load_tiny_tokenizer()
    chat = ChatFormat(tok)
    suite = ToolCalc(num_train=50, num_val=10, num_test=10)
    return tok, chat, suite


def run_script(setup, actions, task=None):
    tok, chat, suite = setup
    task = task or Task(id="t", prompt="Compute (2+3)*4", answer=20)
    engine = ScriptedEngine(chat, actions)
    runner = EpisodeRunner(engine, chat, suite, max_seq_len=512)
    traj = runner.run([task], [0], runner.sampling(1.0, 1.0, False))[0]
    return tok, chat, engine, traj


def test_each_turn_prompt_is_a_prefix_and_generated_tokens_are_masked(setup):
    actions = ["<calc>2+3</calc>", "<calc>5*4</calc>", "<answer>20</answer>"]
    tok, chat, engine, traj = run_script(setup, actions)
    assert traj.success is True and traj.status == "ok"
    assert len(engine.prompts) == 3
    # every prompt the engine saw is a prefix of the final episode: nothing was re-tokenized
    for p in engine.prompts:
        assert traj.token_ids[: len(p)] == p
    # exactly the generated action tokens carry loss_mask 1 and the engine's logprobs
    generated = [i for i, m in enumerate(traj.loss_mask) if m]
    expected = sum(len(chat.action_ids(a)) for a in actions)
    assert len(generated) == expected
    for turn, action in zip(traj.turns, actions):
        s, e = turn.span
        assert traj.token_ids[s:e] == chat.action_ids(action)
        assert all(traj.loss_mask[s:e]) and all(lp == -0.5 for lp in traj.logprobs[s:e])
    # observation tokens (the calculator's results) are present and masked
    obs_ids = chat.observation_ids("<result>5</result>")
    start = traj.turns[0].span[1]
    assert traj.token_ids[start : start + len(obs_ids)] == obs_ids
    assert not any(traj.loss_mask[start : start + len(obs_ids)])
    # decoding the whole episode gives the chat transcript
    text = tok.decode(traj.token_ids)
    assert "<result>5</result>" in text and text.endswith("<answer>20</answer><|end|>")


def test_malformed_action_becomes_an_observation_not_an_exception(setup):
    actions = ["what is this", "<answer>20</answer>"]
    _, _, _, traj = run_script(setup, actions)
    assert traj.turns[0].info["invalid"] is True
    assert traj.turns[0].observation.startswith("error:")
    assert traj.success is True


def test_env_exception_marks_episode_failed(setup):
    tok, chat, suite = setup

    class Boom:
        system_prompt, max_turns = "", 3

        def reset(self, task):
            return task.prompt

        def step(self, action):
            raise RuntimeError("tool crashed")

    suite.make = lambda: Boom()
    engine = ScriptedEngine(chat, ["<answer>1</answer>"])
    runner = EpisodeRunner(engine, chat, suite, 512)
    traj = runner.run([Task("t", "x", 1)], [0], runner.sampling(1.0, 1.0, False))[0]
    assert traj.status == "failed" and "tool crashed" in traj.error and traj.success is False


def test_hf_engine_logprobs_match_a_forward_pass():
    """Behaviour logprobs recorded while sampling equal the model's own on the final sequence."""
    from agentrl.models.factory import TinyModel
    from agentrl.rollout.engine import HFEngine, SamplingParams

    model, tok = TinyModel(
        hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128
    ).load()
    model.eval()
    engine = HFEngine()
    engine.bind(model, tok)
    prompts = [tok("Compute 1+2")["input_ids"], tok("Compute (12+7)*3-5 now")["input_ids"]]
    g = torch.Generator().manual_seed(0)
    gens = engine.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.7), g)
    for p, gen in zip(prompts, gens):
        ids = torch.tensor([p + gen.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(p) - 1 : -1] / 0.7
        lp = (
            torch.log_softmax(logits, -1)
            .gather(-1, torch.tensor(gen.token_ids)[:, None])
            .squeeze(-1)
        )
        assert torch.allclose(lp, torch.tensor(gen.logprobs), atol=1e-4)
