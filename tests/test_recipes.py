"""The measured recipes (conf/recipe): each env's bare command runs its own, selected through the
defaults list by the env (and reward) chosen; the default run, experiments, debug=smoke and
command-line values are untouched by them."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF


def leaves(node, prefix: str = "") -> dict:
    """{dotted path: value} of every leaf of a config (interpolations unresolved)."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def recipe(name: str) -> dict:
    return leaves(OmegaConf.load(CONF / "recipe" / f"{name}.yaml"))


# env -> (the experiment that spells out its measured run, the groups it picks otherwise)
MEASURED = {
    "webnav": ("webnav_grpo", {}),
    "tooluse": ("tooluse_grpo", {}),
    "reasoning_gym": ("reasoning_gym_grpo", {}),
    # measured with the env's graded reward: `env=codegen reward=env_return` is that run
    "codegen": ("codegen_grpo", {"reward": "env_return"}),
}


def test_every_recipe_is_an_env_or_env_reward_pair():
    envs = {p.stem for p in (CONF / "env").glob("*.yaml")}
    rewards = {p.stem for p in (CONF / "reward").glob("*.yaml")}
    assert {p.stem for p in (CONF / "recipe").glob("*.yaml")} == set(MEASURED) <= envs
    for p in (CONF / "recipe" / "reward").glob("*.yaml"):
        assert any(p.stem == f"{e}_{r}" for e in envs for r in rewards), p.name


@pytest.mark.parametrize("env", sorted(MEASURED))
def test_bare_env_command_runs_the_measured_recipe(make_cfg, env):
    experiment, groups = MEASURED[env]
    bare = leaves(make_cfg(f"env={env}"))
    for path, value in recipe(env).items():
        assert bare[path] == value, f"env={env}: {path}"
    # the whole run is the experiment's, but for the groups it picks beyond the env
    extra = [f"{group}={option}" for group, option in groups.items()]
    assert leaves(make_cfg(f"env={env}", *extra)) == leaves(make_cfg(f"experiment={experiment}"))


def test_webnav_with_the_learned_reward_runs_the_measured_reward_model(make_cfg):
    cfg = make_cfg("env=webnav", "reward=learned")
    composed = leaves(cfg)
    for path, value in {**recipe("webnav"), **recipe("reward/webnav_learned")}.items():
        assert composed[path] == value, path
    assert cfg.reward.init == "warmstart" and cfg.reward.training.sources.rollouts.num_tasks == 300
    assert composed == leaves(make_cfg("experiment=webnav_learned"))
    # the reward model's settings need reward=learned: with the default reward, none of them
    assert "training" not in make_cfg("env=webnav").reward


def test_the_default_run_has_no_recipe(make_cfg):
    """toolcalc (the default) and external have no recipe: their bare commands are the defaults,
    and the default run is the measured default recipe."""
    default = leaves(make_cfg())
    assert default == leaves(make_cfg("~recipe", "~recipe/reward"))
    for path, value in leaves(OmegaConf.load(CONF / "experiment" / "toolcalc_grpo.yaml")).items():
        if not path.startswith("defaults"):
            assert default[path] == value, path
    assert leaves(make_cfg("env=external")) == leaves(make_cfg("env=external", "~recipe"))


def test_command_line_values_debug_and_experiments_win_over_recipes(make_cfg):
    cfg = make_cfg("env=webnav", "reward=learned", "env.max_turns=9", "reward.training.steps=7")
    assert (cfg.env.max_turns, cfg.reward.training.steps) == (9, 7)
    assert cfg.env.kind_query_prob == 0.6  # the rest of the recipe stays
    smoke = leaves(OmegaConf.load(CONF / "debug" / "smoke.yaml"))
    for env in ("webnav", "tooluse"):
        composed = leaves(make_cfg(f"env={env}", "debug=smoke"))
        assert all(composed[path] == value for path, value in smoke.items()), env
    # an experiment on an env with a recipe keeps its own settings (it opts out of the recipe)
    tooluse_default = OmegaConf.load(CONF / "env" / "tooluse.yaml").system_prompt
    assert make_cfg("experiment=smollm2_tooluse").env.system_prompt == tooluse_default
    # and `~recipe` is the env's own defaults
    assert make_cfg("env=reasoning_gym", "~recipe").env.config == {}
