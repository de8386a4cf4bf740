"""``python evaluate.py``: check every input -> run every policy on every suite -> write outputs.

All inputs are checked before any episode runs and before anything is written: the candidates
(files, run configs, state-dict shapes), the suites (env configs, splits), the settings, and that
each suite's text fits each model's tokenizer. A bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agentrl.envs.base import close_suite
from agentrl.evaluation import html
from agentrl.evaluation.episodes import (
    Decoding,
    Suite,
    build_suites,
    check_tokenizer,
    env_mismatch,
    run_suite,
    training_overlap,
)
from agentrl.evaluation.outputs import Evaluation, capability_png, compare, trajectory_records
from agentrl.evaluation.outputs import write_all as write_outputs
from agentrl.evaluation.policies import Policies, resolve_device
from agentrl.evaluation.run_env import with_run_env
from agentrl.evaluation.sources import Candidate, EvalError, discover, load_run_config
from agentrl.evaluation.stats import episode_summary, z_value
from agentrl.evaluation.tracking import check_log_to, log_evaluation
from agentrl.models.factory import ModelLoadError
from agentrl.utils.instantiate import ConfigError, instantiate, to_container

log = logging.getLogger("agentrl.evaluation")


def output_dir(cfg: DictConfig) -> Path:
    """``output_dir``, or ``<run_dir>/eval``; it must be (or become) a writable folder."""
    if cfg.get("output_dir"):
        out = Path(cfg.output_dir)
    elif cfg.get("run_dir"):
        out = Path(cfg.run_dir) / "eval"
    else:
        raise EvalError("output_dir=<folder> is required with checkpoints= or model_dir=")
    if out.exists() and not out.is_dir():
        raise EvalError(f"output_dir {out} exists and is not a folder")
    parent = next(p for p in [out, *out.parents] if p.exists())
    if not os.access(parent, os.W_OK):
        raise EvalError(f"output_dir {out} cannot be written ({parent} is not writable)")
    return out


def check_settings(cfg: DictConfig) -> Decoding:
    decoding = Decoding(
        greedy=bool(cfg.greedy),
        temperature=float(cfg.temperature),
        top_p=float(cfg.top_p),
        episodes_per_task=int(cfg.episodes_per_task),
        batch_size=int(cfg.batch_size),
        seed=int(cfg.seed),
    )
    decoding.check()
    ks = list(cfg.pass_k or [])
    if any(not isinstance(k, int) or k < 1 for k in ks):
        raise EvalError(f"pass_k must be a list of integers >= 1, got {ks}")
    try:
        z_value(float(cfg.confidence))
    except ValueError as exc:
        raise EvalError(str(exc)) from exc
    if int(cfg.bootstrap_samples) < 100:
        raise EvalError(f"bootstrap_samples must be >= 100, got {cfg.bootstrap_samples}")
    check_log_to(cfg.get("log_to"))
    return decoding


def layout(cfg: DictConfig, run_cfg: DictConfig | None) -> dict:
    """max_seq_len and observation_role: the eval config's, else the run's, else the default."""
    rollout = run_cfg.rollout if run_cfg is not None else cfg.default_rollout
    return {
        "max_seq_len": int(cfg.max_seq_len or rollout.max_seq_len),
        "observation_role": str(cfg.observation_role or rollout.observation_role),
    }


class Plan:
    """Every checked input of one evaluation."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.decoding = check_settings(cfg)
        self.candidates: list[Candidate] = discover(cfg)
        self.out = output_dir(cfg)
        self.suites: list[Suite] = build_suites(cfg.suites, cfg.split, cfg.get("num_tasks"))
        self.reward = instantiate(cfg.reward, "reward")
        self.run_cfgs = {
            c.run_dir: load_run_config(c.run_dir) for c in self.candidates if c.run_dir
        }
        # a model per run whose checkpoints (or baseline) are evaluated; HF folders load their own
        built = {c.run_dir: self.run_cfgs[c.run_dir] for c in self.candidates if c.kind != "hf"}
        has_baseline = any(c.kind == "baseline" for c in self.candidates)
        self.policies = Policies(built, resolve_device(cfg.device), has_baseline)
        self.policies.check(self.candidates)
        self.layouts = {c.label: layout(cfg, self.run_cfgs.get(c.run_dir)) for c in self.candidates}
        self._check_tokenizers()
        # a run evaluated on suites that are not its env (e.g. webnav on the default toolcalc)
        found = (env_mismatch(cfg.suites, rc.get("env"), d) for d, rc in self.run_cfgs.items())
        self.mismatches = [m for m in found if m]
        for m in self.mismatches:
            log.warning("%s", m)

    def _check_tokenizers(self) -> None:
        seen = set()
        for c in self.candidates:
            key = c.path if c.kind == "hf" else c.run_dir
            if key in seen:
                continue
            seen.add(key)
            model, tokenizer, _ = self.policies.prepare(c, load_weights=False)
            for suite in self.suites:
                check_tokenizer(c.label, tokenizer, model, suite, self.layouts[c.label])

    def notes(self) -> list[str]:
        out = list(self.mismatches)
        for c in self.candidates:
            if c.kind == "baseline":
                out.append(f"baseline = {self.policies.baseline_source(c)}")
        if self.cfg.baseline and not any(c.kind == "baseline" for c in self.candidates):
            out.append(
                "no baseline: it is rebuilt from the config of one run, and these inputs have "
                "none (a model_dir outside a run dir) or come from several runs"
            )
        for run_dir, run_cfg in self.run_cfgs.items():
            for suite in self.suites:
                n = training_overlap(suite, self.cfg.suites[suite.name], run_cfg.get("env"))
                if n:
                    out.append(
                        f"{n} of the {len(suite.tasks)} tasks of suite {suite.name} are in the "
                        f"training split of the run {run_dir}: their scores are not held out"
                    )
        n = self.decoding.episodes_per_task
        skipped = sorted(k for k in self.cfg.pass_k or [] if k > n)
        if skipped:
            out.append(
                f"pass@{', pass@'.join(map(str, skipped))} not reported: "
                f"they need episodes_per_task >= k (it is {n}, greedy={self.decoding.greedy})"
            )
        return out


def evaluate_candidate(plan: Plan, c: Candidate, ev: Evaluation) -> None:
    cfg = plan.cfg
    model, tokenizer, context = plan.policies.prepare(c)
    with context:
        for suite in plan.suites:
            log.info("evaluating %s on %s (%d tasks)", c.label, suite.name, len(suite.tasks))
            trajs = run_suite(
                model, tokenizer, suite, plan.reward, plan.decoding, plan.layouts[c.label]
            )
            stats = episode_summary(
                trajs, list(cfg.pass_k or []), cfg.bootstrap_samples, cfg.seed, cfg.confidence
            )
            ev.rows.append(
                {
                    "label": c.label,
                    "kind": c.kind,
                    "names": " ".join(c.names),
                    "rl_step": c.rl_step,
                    "suite": suite.name,
                    "split": cfg.split,
                    "path": c.path or "",
                    **stats,
                }
            )
            ev.trajectories[(c.label, suite.name)] = trajs
            log.info("  success %.1f%%", 100 * stats["success_rate"])


def header(cfg: DictConfig) -> str:
    source = next(f"{k}={cfg[k]}" for k in ("run_dir", "checkpoints", "model_dir") if cfg.get(k))
    mode = "greedy" if cfg.greedy else f"sampled (temperature {cfg.temperature}, top_p {cfg.top_p})"
    return (
        f"{source} · {cfg.split} split · {cfg.episodes_per_task} episode(s) per task, {mode} · "
        f"seed {cfg.seed}"
    )


def report_records(ev: Evaluation, per_group: int) -> list[dict]:
    counts: dict[tuple[str, str], int] = {}
    out = []
    for rec in trajectory_records(ev):
        key = (rec["label"], rec["suite"])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= per_group:
            out.append(rec)
    return out


def evaluate(cfg: DictConfig) -> Evaluation:
    """Evaluate, write the outputs, and return what was found (raises EvalError on bad input)."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    cfg = with_run_env(cfg)
    plan = Plan(cfg)
    try:
        return _evaluate(cfg, plan)
    finally:
        for suite in plan.suites:
            close_suite(suite.env)


def _evaluate(cfg: DictConfig, plan: Plan) -> Evaluation:
    ev = Evaluation(
        config=to_container(cfg),
        candidates=[{"label": c.label, **vars(c)} for c in plan.candidates],
        notes=plan.notes(),
    )
    for c in plan.candidates:
        evaluate_candidate(plan, c, ev)
    compare(ev, cfg.bootstrap_samples, cfg.seed, cfg.confidence)
    png = capability_png(ev.rows, cfg.confidence)
    page = html.render(ev, png, report_records(ev, cfg.report_episodes), header(cfg))
    files = write_outputs(ev, plan.out, page, png)
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    if cfg.get("log_to"):
        log_evaluation(ev, plan.out, files, cfg.log_to)
    for c in ev.comparisons:
        log.info("%s, %s: %s", c["suite"], c["comparison"], c["statement"])
    return ev


def main(cfg: DictConfig) -> Evaluation:
    """Entry for evaluate.py: bad input is one line on stderr and exit code 2."""
    try:
        return evaluate(cfg)
    except (EvalError, ConfigError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OmegaConfBaseException as exc:  # e.g. a run config interpolation that cannot resolve
        print(f"error: configuration: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)


def print_config(cfg: DictConfig) -> None:
    print(OmegaConf.to_yaml(cfg, resolve=False))
