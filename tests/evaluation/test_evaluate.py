"""evaluate() on small fake runs: outputs, determinism, checkpoint naming, the baseline, HF folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from agentrl.evaluation import evaluate
from agentrl.evaluation.cli import main
from agentrl.evaluation.policies import warmstart_weights
from agentrl.evaluation.sources import load_run_config
from agentrl.models.factory import prepare_tokenizer
from agentrl.models.tokenizer import load_tiny_tokenizer
from agentrl.utils.instantiate import instantiate
from tests.conftest import CONF
from tests.evaluation.conftest import save_checkpoint

OUTPUTS = {
    "metrics.json",
    "metrics.csv",
    "capability.png",
    "comparison.txt",
    "trajectories.jsonl",
    "report.html",
}


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def token_ids(ev) -> list[list[int]]:
    return [t.token_ids for trajs in ev.trajectories.values() for t in trajs]


def test_run_dir_gives_every_output(fake_run, eval_cfg, tmp_path):
    run = fake_run()
    out = tmp_path / "out"
    ev = main(eval_cfg(f"run_dir={run}", f"output_dir={out}"))
    assert {p.name for p in out.iterdir()} == OUTPUTS
    rows = read_csv(out / "metrics.csv")
    assert [(r["label"], r["rl_step"], r["suite"]) for r in rows] == [
        ("baseline", "0", "toolcalc"),
        ("step 2", "2", "toolcalc"),
        ("step 4 (last)", "4", "toolcalc"),
    ]
    for r in rows:
        assert r["tasks"] == "3" and r["episodes"] == "3" and r["split"] == "test"
        assert float(r["success_ci_low"]) <= float(r["success_rate"]) <= float(r["success_ci_high"])
        assert "pass@1" in r and "pass@4" not in r
    doc = json.loads((out / "metrics.json").read_text())
    assert len(doc["results"]) == 3 and doc["config"]["split"] == "test"
    assert any("baseline = the run's model spec" in n for n in doc["notes"])
    assert any("pass@4 not reported" in n for n in doc["notes"])
    assert not any("not held out" in n for n in doc["notes"])
    assert [c["comparison"] for c in doc["comparisons"]] == [
        "first vs last checkpoint",
        "best vs baseline",
    ]
    text = (out / "comparison.txt").read_text()
    assert "first vs last checkpoint: " in text and "best vs baseline: " in text
    assert doc["comparisons"][0]["statement"] in text
    episodes = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(episodes) == 9
    first = episodes[0]
    assert {"label", "rl_step", "suite", "task_id", "prompt", "turns", "reward", "success"} <= set(
        first
    )
    assert first["turns"] and "observation" in first["turns"][0]
    assert (out / "capability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["success_rate"] for r in ev.rows] == [r["success_rate"] for r in doc["results"]]


def test_same_seed_same_results_and_the_baseline_is_the_initial_model(fake_run, eval_cfg, tmp_path):
    run = fake_run(steps={"last": 4})
    common = [f"run_dir={run}", "greedy=false", "episodes_per_task=2", "pass_k=[1,2]"]
    a = evaluate(eval_cfg(*common, f"output_dir={tmp_path / 'a'}"))
    b = evaluate(eval_cfg(*common, f"output_dir={tmp_path / 'b'}"))
    assert a.rows == b.rows
    assert (tmp_path / "a" / "trajectories.jsonl").read_text() == (
        tmp_path / "b" / "trajectories.jsonl"
    ).read_text()
    assert all({"pass@1", "pass@2"} <= set(r) for r in a.rows)
    assert all(r["episodes"] == 6 for r in a.rows)
    c = evaluate(eval_cfg(*common, "seed=1", "baseline=false", f"output_dir={tmp_path / 'c'}"))
    assert token_ids(c)[-6:] != token_ids(a)[-6:]
    # the baseline's episodes are those of the model spec's own weights
    baseline = a.trajectories[("baseline", "toolcalc")]
    run_cfg = load_run_config(run)
    model, _ = instantiate(run_cfg.model).load()
    save_checkpoint(run / "checkpoints" / "initial.ckpt", model, 1)
    d = evaluate(eval_cfg(*common, "baseline=false", f"output_dir={tmp_path / 'd'}"))
    initial = d.trajectories[("step 1 (initial)", "toolcalc")]
    assert [t.token_ids for t in initial] == [t.token_ids for t in baseline]


def test_checkpoints_of_one_step_are_evaluated_once(fake_run, eval_cfg, tmp_path):
    run = fake_run(steps={"best": 4, "last": 4})
    ev = evaluate(eval_cfg(f"run_dir={run}", f"output_dir={tmp_path / 'out'}"))
    assert [r["label"] for r in ev.rows] == ["baseline", "step 4 (best, last)"]
    (comp,) = ev.comparisons
    assert comp["comparison"] == "best vs baseline"
    assert comp["note"] == "best = the run's best.ckpt (selected on validation)"


def test_last_checkpoint_is_compared_with_the_baseline_when_it_is_not_the_best(
    fake_run, eval_cfg, tmp_path
):
    run = fake_run(steps={"best": 2, "last": 4})
    ev = evaluate(eval_cfg(f"run_dir={run}", f"output_dir={tmp_path / 'out'}"))
    comps = {c["comparison"]: c for c in ev.comparisons}
    assert list(comps) == ["first vs last checkpoint", "best vs baseline", "last vs baseline"]
    assert comps["last vs baseline"]["a"] == "baseline"
    assert comps["last vs baseline"]["b"] == "step 4 (last)"
    assert comps["best vs baseline"]["b"] == "step 2 (best)"
    assert "last vs baseline: " in (tmp_path / "out" / "comparison.txt").read_text()


def test_run_dir_defaults_output_to_run_eval(fake_run, eval_cfg):
    run = fake_run(steps={"last": 2})
    evaluate(eval_cfg(f"run_dir={run}"))
    assert {p.name for p in (run / "eval").iterdir()} == OUTPUTS


def test_checkpoints_from_two_runs(fake_run, eval_cfg, tmp_path):
    a = fake_run("a", steps={"last": 2})
    b = fake_run("b", steps={"last": 3})
    ckpts = f"checkpoints=[{a}/checkpoints/last.ckpt,{b}/checkpoints/last.ckpt]"
    ev = evaluate(eval_cfg(ckpts, f"output_dir={tmp_path / 'out'}"))
    assert [r["rl_step"] for r in ev.rows] == [2, 3]
    assert any("no baseline" in n for n in ev.notes)
    assert [c["comparison"] for c in ev.comparisons] == ["first vs last checkpoint"]


def test_exported_model_dir_with_its_run_baseline(fake_run, eval_cfg, tmp_path):
    run = fake_run(steps={"last": 4})
    model, tokenizer = instantiate(load_run_config(run).model).load()
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("policy."): v for k, v in state.items()})
    model.save_pretrained(run / "export")
    tokenizer.save_pretrained(run / "export")
    ev = evaluate(eval_cfg(f"model_dir={run / 'export'}", f"output_dir={tmp_path / 'out'}"))
    assert [(r["label"], r["kind"], r["rl_step"]) for r in ev.rows] == [
        ("baseline", "baseline", 0),
        ("export", "hf", 4),
    ]
    # the export holds the last checkpoint's weights: the same episodes
    ckpt = evaluate(eval_cfg(f"run_dir={run}", "baseline=false", f"output_dir={tmp_path / 'ck'}"))
    same = [t.token_ids for t in ckpt.trajectories[("step 4 (last)", "toolcalc")]]
    assert [t.token_ids for t in ev.trajectories[("export", "toolcalc")]] == same


@pytest.mark.parametrize("env", ["toolcalc", "external", "webnav"])
def test_baseline_finds_the_warm_start_training_cached(make_cfg, monkeypatch, env):
    """The evaluation baseline looks up the very cache entry training wrote, for every kind of
    env: env=external is warm-started on its task source, and the baseline must know that."""
    from agentrl.train import warm_start
    from agentrl.warmstart import WarmStart

    # its own cache: the stage is faked, and the one entry it writes is looked for
    cfg = make_cfg(
        "debug=smoke", f"env={env}", "warmstart.steps=1", "warmstart.num_demos=2", own_cache=True
    )

    def fake_training(self, policy, tokenizer, runner, suite, folder, identity, kwargs, stop):
        folder.mkdir(parents=True)
        torch.save({}, folder / "model.pt")
        return folder

    monkeypatch.setattr(WarmStart, "_run", fake_training)
    tokenizer = prepare_tokenizer(load_tiny_tokenizer())
    parts = {"warmstart": instantiate(cfg.warmstart), "engine": None, "suite": None}
    warm_start(cfg, parts, None, tokenizer)
    (written,) = [p for p in (Path(cfg.warmstart.cache_dir)).glob("*/model.pt")]
    weights, source = warmstart_weights(cfg)
    assert weights == written, source


def test_tasks_from_the_runs_training_split_are_flagged(fake_run, eval_cfg, tmp_path):
    run = fake_run(steps={"last": 2})
    overrides = ["split=train", "num_tasks=2", "suites.toolcalc.max_turns=3", "baseline=false"]
    ev = evaluate(eval_cfg(f"run_dir={run}", *overrides, f"output_dir={tmp_path}", short=False))
    (note,) = [n for n in ev.notes if "not held out" in n]
    assert note.startswith("2 of the 2 tasks of suite toolcalc are in the training split")


def test_a_run_of_another_env_than_the_suites_is_flagged(fake_run, eval_cfg, tmp_path):
    """A webnav run evaluated on the default suite (toolcalc): the evaluation says so, and how to
    evaluate the run's own env; a toolcalc run gets no such note."""
    run = fake_run(steps={"last": 2})
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    saved.env = OmegaConf.load(CONF / "env" / "webnav.yaml")
    OmegaConf.save(saved, run / ".hydra" / "config.yaml")
    ev = evaluate(eval_cfg(f"run_dir={run}", "baseline=false", f"output_dir={tmp_path / 'o'}"))
    (note,) = [n for n in ev.notes if "no suite evaluates" in n]
    assert "agentrl.envs.webnav.WebNav" in note and "run_env=true" in note
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert note in doc["notes"]
    mine = fake_run(name="toolcalc_run", steps={"last": 2})
    ev = evaluate(eval_cfg(f"run_dir={mine}", "baseline=false", f"output_dir={tmp_path / 'p'}"))
    assert not any("no suite evaluates" in n for n in ev.notes)
