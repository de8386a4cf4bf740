"""`python evaluate.py run_dir=...` evaluates the run's own env, with the settings it trained on
(agentrl/evaluation/run_env.py); suites named on the command line win."""

from __future__ import annotations

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from agentrl.evaluation import evaluate
from agentrl.evaluation.run_env import names_suites, with_run_env
from agentrl.evaluation.sources import EvalError
from tests.evaluation.conftest import compose_eval, make_fake_run


def record_run(run_dir, env_choice: str, env_overrides: list[str]) -> None:
    """Make the fake run's recorded config and group choices those of an `env=<choice> ...` run."""
    from tests.conftest import compose_config

    cfg = compose_config([f"env={env_choice}", *env_overrides], run_dir, run_dir / "cache")
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    saved.env = cfg.env
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    runtime = {"cwd": str(run_dir), "choices": {"env": env_choice, "model": "tiny"}}
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": runtime}}))


@pytest.fixture
def command_line():
    """command_line(*overrides) -> the evaluate config, with Hydra's record of that command line
    (HydraConfig), as evaluate.py's main sees it."""

    def _set(*overrides: str):
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from tests.conftest import CONF

        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("evaluate", overrides=list(overrides), return_hydra_config=True)
        GlobalHydra.instance().clear()
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _set
    HydraConfig.instance().cfg = None


def test_a_run_of_another_env_is_evaluated_on_it_with_its_settings(tmp_path):
    run = make_fake_run(tmp_path, "run", {"last": 2})
    settings = ["env.num_train=20", "env.num_val=5", "env.num_test=5", "env.max_turns=2"]
    record_run(run, "reasoning_gym", [*settings, "env.max_action_tokens=8"])
    out = tmp_path / "eval"
    cfg = compose_eval([f"run_dir={run}", "run_env=true", "baseline=false", "num_tasks=2"])
    ev = evaluate(OmegaConf.merge(cfg, {"output_dir": str(out), "bootstrap_samples": 200}))
    assert {row["suite"] for row in ev.rows} == {"reasoning_gym"}
    suite = ev.config["suites"]["reasoning_gym"]
    # the run's own settings (its recipe's dataset config, its max_action_tokens), not the env's
    assert (suite["num_test"], suite["max_action_tokens"], suite["config"]["max_terms"]) == (
        5,
        8,
        3,
    )
    assert not [n for n in ev.notes if "no suite evaluates" in n]


def test_evaluate_py_picks_the_run_env_unless_the_command_line_names_suites(tmp_path, command_line):
    """A SmolLM2-style toolcalc run (max_ops=3, left_to_right=false) is evaluated on those
    settings by the bare command; suites on the command line are kept as given."""
    run = make_fake_run(tmp_path, "run", {"last": 2})
    record_run(run, "toolcalc", ["env.max_ops=3", "env.left_to_right=false"])
    suites = with_run_env(command_line(f"run_dir={run}")).suites
    assert list(suites) == ["toolcalc"]
    assert (suites.toolcalc.max_ops, suites.toolcalc.left_to_right) == (3, False)
    for named in (["suites.toolcalc.max_ops=4"], ["+env@suites.w=webnav"], ["~suites.toolcalc"]):
        cfg = command_line(f"run_dir={run}", *named)
        assert with_run_env(cfg).suites == cfg.suites, named
    cfg = command_line(f"run_dir={run}", "run_env=false")
    assert with_run_env(cfg).suites.toolcalc.max_ops == 2  # the env's default
    # a config composed by a caller (no command line known) keeps its suites unless run_env=true
    HydraConfig.instance().cfg = None
    assert with_run_env(compose_eval([f"run_dir={run}"])).suites.toolcalc.max_ops == 2


def test_names_suites():
    assert names_suites(["suites.toolcalc.max_ops=3"]) and names_suites(["~suites.toolcalc"])
    assert names_suites(["+env@suites.hard=toolcalc"]) and names_suites(["suites={}"])
    assert not names_suites(["run_dir=outputs/suites.x", "num_tasks=3", "env_suites=1"])


def test_bad_run_env_inputs_are_one_line(tmp_path):
    with pytest.raises(EvalError, match="run_env must be auto, true or false"):
        with_run_env(compose_eval([f"run_dir={tmp_path}", "run_env=maybe"]))
    with pytest.raises(EvalError, match="no .hydra/config.yaml with an env"):
        with_run_env(compose_eval([f"run_dir={tmp_path}", "run_env=true"]))
    # auto, with no run to read: left to the input checks (a missing run_dir is said as such)
    cfg = compose_eval([f"run_dir={tmp_path / 'missing'}", "run_env=auto"])
    assert with_run_env(cfg) is cfg
