"""``python evaluate.py run_dir=...`` evaluates the run's own env: the env group option the run
chose (``.hydra/hydra.yaml``) with the settings it trained on (``.hydra/config.yaml``), in place
of evaluate.yaml's default suites, unless the command line names suites (see ``run_env`` in
conf/evaluate.yaml)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from agentrl.evaluation.sources import EvalError, hydra_runtime, load_run_config


def names_suites(overrides: list[str]) -> bool:
    """Whether Hydra command-line ``overrides`` touch the suites (``suites.toolcalc.max_ops=3``,
    ``~suites.toolcalc``, ``+env@suites.webnav=webnav``)."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".", 1)[0] in ("suites", "env@suites"):
            return True
    return False


def use_run_env(cfg: DictConfig) -> bool:
    """``run_env``: true or false, or auto (true when evaluate.py's command line names no suite;
    false when Hydra's command line is not known, e.g. the config composed by a caller)."""
    choice = cfg.get("run_env", "auto")
    if choice not in ("auto", True, False):
        raise EvalError(f"run_env must be auto, true or false, got {choice!r}")
    if choice != "auto":
        return bool(choice)
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return not names_suites(list(HydraConfig.get().overrides.task))


def run_env_suite(run_dir: str) -> tuple[str, dict]:
    """(the run's env option name, its env settings resolved in the run's config)."""
    run_cfg = load_run_config(run_dir)
    if run_cfg is None or run_cfg.get("env") is None:
        raise EvalError(
            f"{run_dir} has no .hydra/config.yaml with an env to evaluate on; name the suites "
            "(e.g. +env@suites.toolcalc=toolcalc) or set run_env=false"
        )
    target = str(run_cfg.env.get("_target_", "env"))
    name = (hydra_runtime(run_dir).get("choices") or {}).get("env")
    name = str(name or target.rsplit(".", 1)[-1].lower())
    try:  # the env's interpolations (paths, rollout...) point into the run's config
        env = OmegaConf.to_container(run_cfg.env, resolve=True)
    except Exception as exc:
        raise EvalError(f"the env of the run {run_dir} cannot be resolved: {exc}") from exc
    return name, env


def with_run_env(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the run's own env as its only suite when ``run_dir`` is given and
    ``use_run_env`` says so; otherwise ``cfg`` unchanged."""
    if not cfg.get("run_dir") or not use_run_env(cfg):
        return cfg
    recorded = Path(cfg.run_dir) / ".hydra" / "config.yaml"
    if cfg.get("run_env") == "auto" and not recorded.is_file():
        return cfg  # no run to read (a missing run_dir...): the input checks say what is wrong
    name, env = run_env_suite(str(cfg.run_dir))
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.suites = {name: env}
    return cfg
