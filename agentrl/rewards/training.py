"""Training a reward model: preference pairs -> Bradley-Terry -> a cached checkpoint.

``python launch.py mode=reward_model env=toolcalc`` runs ``train_reward_model``: it trains the
reward model of ``conf/reward/learned.yaml`` (``reward.training``) and writes it to the run
directory (``reward_model/``: ``model.pt``, ``info.json``, ``metrics.csv``) and to the cache,
where ``python launch.py reward=learned`` with the same settings finds it.

Pair sources (``training.sources``), any combination:

- ``env``: pairs the env generates (``agentrl.pairs.env_pairs``: a verified oracle demonstration
  vs a perturbed copy the verifier rejects) on ``num_tasks`` train tasks;
- ``file``: a user's JSONL file (``agentrl.pairs`` schema, docs/preferences.md), replayed
  through the env to add its observations;
- ``rollouts``: the (warm-started) policy samples ``group_size`` episodes of ``num_tasks`` train
  tasks, ranked by another reward (``ranker``, the heuristic by default): best vs worst.

Held-out pairs: env pairs on ``val_tasks`` tasks of the env's val split, plus ``val_fraction``
of the file and rollout pairs. Logged: ``rm/val_accuracy`` (pairwise accuracy) and
``rm/val_success_corr`` (the correlation of the score with the verifier's outcome).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from agentrl import stopping
from agentrl.envs.base import close_suite
from agentrl.pairs import PreferencePair, env_pairs, load_pairs, pair_trajectories, ranked_pairs
from agentrl.rewards.base import score_batch
from agentrl.rewards.composite import CompositeReward
from agentrl.rewards.learned import LearnedReward, RewardModelModule, pairwise_accuracy
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.runner import EpisodeRunner
from agentrl.utils.cache import cache_key
from agentrl.utils.instantiate import ConfigError, instantiate
from agentrl.warmstart import stage_parts, warm_start

log = logging.getLogger(__name__)

DEFAULTS = {
    "sources": {"env": {"num_tasks": 2000}},
    "val_tasks": 200,
    "val_fraction": 0.1,
    "steps": 400,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup_steps": 20,
    "center_coef": 0.01,
    "val_every": 100,
    "seed": 0,
}


def _settings(settings: dict) -> dict:
    s = {**DEFAULTS, **(settings or {})}
    unknown = set(s) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"reward.training: unknown key(s) {sorted(unknown)}")
    for key in ("steps", "batch_size", "val_every"):
        if int(s[key]) < 1:
            raise ConfigError(f"reward.training.{key} must be >= 1, got {s[key]}")
    if not s["sources"]:
        raise ConfigError("reward.training.sources is empty: enable env, file or rollouts")
    return s


def replay_runner(reward: LearnedReward, suite) -> EpisodeRunner:
    """An EpisodeRunner that only replays actions (no engine) with the reward model's tokenizer."""
    return EpisodeRunner(None, ChatFormat(reward.encoder.tokenizer), suite, max_seq_len=10**9)


def rollout_pairs(cfg: DictConfig, suite, src: dict, seed: int) -> list[PreferencePair]:
    """Pairs from the policy's own rollouts (warm-started as the run would), ranked by a reward."""
    spec = instantiate(cfg.model, "model")
    policy, tokenizer = spec.load()
    parts = stage_parts(cfg, suite)
    warm_start(cfg, parts, policy, tokenizer)
    ranker = src.get("ranker") or _HEURISTIC
    if isinstance(ranker, dict):
        ranker = instantiate(OmegaConf.create(ranker), "reward.training.sources.rollouts.ranker")
    engine = parts["engine"]
    engine.bind(policy, tokenizer)
    runner = EpisodeRunner(engine, ChatFormat(tokenizer), suite, cfg.rollout.max_seq_len)
    params = runner.sampling(float(src.get("temperature", 1.0)), 1.0, greedy=False)
    group = int(src.get("group_size", 4))
    tasks = suite.tasks("train")[-int(src.get("num_tasks", 200)) :]
    gen = torch.Generator().manual_seed(seed)
    pairs: list[PreferencePair] = []
    policy.eval()
    for i in range(0, len(tasks), 16):
        chunk = tasks[i : i + 16]
        trajs = runner.run(
            [t for t in chunk for _ in range(group)],
            [j for j in range(len(chunk)) for _ in range(group)],
            params,
            gen,
        )
        # a stop signal (agentrl.stopping) cut these episodes short: none of them is kept
        stopping.check("reward model rollouts", i // 16, sync=False)
        score_batch(ranker, trajs)
        got, _ = ranked_pairs(trajs)
        pairs += got
    return pairs


_HEURISTIC = {"_target_": "agentrl.rewards.heuristic.HeuristicReward", "format_bonus": 0.1}


def collect_pairs(reward: LearnedReward, cfg, suite, s: dict):
    """(train pairs, held-out pairs, counts by source)."""
    runner = replay_runner(reward, suite)
    rng = random.Random(s["seed"])
    sources = s["sources"]
    train, val, counts = [], [], {}
    if sources.get("env"):
        env = sources["env"]
        kinds = env.get("perturbations") or None
        kw = {"perturbations": kinds} if kinds else {}
        got, c = env_pairs(suite, runner, suite.tasks("train")[: int(env["num_tasks"])], rng, **kw)
        held, _ = env_pairs(suite, runner, suite.tasks("val")[: int(s["val_tasks"])], rng, **kw)
        train += got
        val += held
        counts["env"] = len(got)
        log.info("reward model: %d env pairs (%s), %d held out", len(got), c, len(held))
    extra = []
    if sources.get("file") and sources["file"].get("path"):
        try:
            got = load_pairs(sources["file"]["path"])
        except (OSError, ValueError) as exc:
            raise ConfigError(f"reward.training.sources.file: {exc}") from exc
        counts["file"] = len(got)
        extra += got
    if sources.get("rollouts") and int(sources["rollouts"].get("num_tasks", 0)) > 0:
        if cfg is None:
            raise ConfigError("reward.training.sources.rollouts needs the run's config")
        got = rollout_pairs(cfg, suite, sources["rollouts"], s["seed"])
        counts["rollouts"] = len(got)
        extra += got
    rng.shuffle(extra)
    n_val = int(round(len(extra) * float(s["val_fraction"])))
    val += extra[:n_val]
    train += extra[n_val:]
    if not train:
        raise ConfigError("reward.training: the pair sources gave no training pairs")
    return runner, train, val, counts


def encode_pairs(reward: LearnedReward, runner, pairs: list[PreferencePair]) -> list[tuple]:
    """Each pair as (chosen ids, rejected ids, chosen success, rejected success)."""
    out = []
    for pair in pairs:
        chosen, rejected = pair_trajectories(runner, pair)
        out.append(
            (
                reward.encoder.ids(pair.task, chosen.turns),
                reward.encoder.ids(pair.task, rejected.turns),
                float(bool(chosen.success)),
                float(bool(rejected.success)),
            )
        )
    return out


def pad_pairs(items: list[tuple], pad_id: int):
    """A list of encoded pairs -> left-padded tensors (chosen, rejected, labels)."""

    def pad(seqs):
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, x in enumerate(seqs):
            ids[i, width - len(x) :] = torch.tensor(x)
            mask[i, width - len(x) :] = 1
        return ids, mask

    c_ids, c_mask = pad([it[0] for it in items])
    r_ids, r_mask = pad([it[1] for it in items])
    c_ok = torch.tensor([it[2] for it in items])
    r_ok = torch.tensor([it[3] for it in items])
    return c_ids, c_mask, r_ids, r_mask, c_ok, r_ok


def train(reward: LearnedReward, cfg, suite, settings: dict, folder, out_dir=None) -> dict:
    """Train ``reward.model`` in place on the configured pairs and save it to ``folder``.
    Returns the info saved beside it (held-out metrics, pair counts, time)."""
    s = _settings(settings)
    start = time.perf_counter()
    runner, train_pairs, val_pairs, counts = collect_pairs(reward, cfg, suite, s)
    pad_id = reward.encoder.tokenizer.pad_token_id
    train_items = encode_pairs(reward, runner, train_pairs)
    val_items = encode_pairs(reward, runner, val_pairs)
    g = torch.Generator().manual_seed(int(s["seed"]))
    loader = torch.utils.data.DataLoader(
        train_items,
        batch_size=int(s["batch_size"]),
        sampler=torch.utils.data.RandomSampler(
            train_items,
            replacement=True,
            num_samples=int(s["steps"]) * int(s["batch_size"]),
            generator=g,
        ),
        collate_fn=lambda b: pad_pairs(b, pad_id),
    )
    val_loader = torch.utils.data.DataLoader(
        val_items, batch_size=64, collate_fn=lambda b: pad_pairs(b, pad_id)
    )
    module = RewardModelModule(
        reward.model,
        float(s["lr"]),
        float(s["weight_decay"]),
        int(s["steps"]),
        int(s["warmup_steps"]),
        float(s["center_coef"]),
    )
    trainer = L.Trainer(**_trainer_kwargs(cfg, s, out_dir or folder, bool(val_items)))
    log.info(
        "reward model: training on %d pairs (%d held out), %d steps",
        len(train_items),
        len(val_items),
        s["steps"],
    )
    with torch.random.fork_rng():
        torch.manual_seed(int(s["seed"]))
        trainer.fit(module, loader, val_loader if val_items else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    by_kind = accuracy_by_kind(reward.model, val_pairs, val_items, pad_id)
    info = {
        "val_accuracy": metrics.get("rm/val_accuracy"),
        "val_success_corr": metrics.get("rm/val_success_corr"),
        "val_loss": metrics.get("rm/val_loss"),
        "train_pairs": len(train_items),
        "val_pairs": len(val_items),
        "pairs_by_source": counts,
        "val_accuracy_by_kind": by_kind,
        "steps": int(s["steps"]),
        "seconds": round(time.perf_counter() - start, 1),
    }
    reward.model.eval()
    if trainer.global_rank == 0:
        reward.save(folder, info)
    if by_kind:
        log.info(
            "reward model: held-out accuracy by kind: %s",
            ", ".join(f"{k} {v['accuracy']:.3f} ({v['pairs']})" for k, v in by_kind.items()),
        )
    log.info(
        "reward model: held-out pairwise accuracy %s, correlation with success %s (%s s) -> %s",
        _fmt(info["val_accuracy"]),
        _fmt(info["val_success_corr"]),
        info["seconds"],
        folder,
    )
    return info


@torch.no_grad()
def accuracy_by_kind(model, pairs: list[PreferencePair], items: list[tuple], pad_id: int) -> dict:
    """Held-out pairwise accuracy per kind of pair (an env pair's perturbation, else its
    source): {kind: {"accuracy": float, "pairs": int}}, kinds sorted."""
    groups: dict[str, list[tuple]] = {}
    for pair, item in zip(pairs, items):
        meta = pair.meta or {}
        kind = str(meta.get("perturbation") or meta.get("source") or "other")
        groups.setdefault(kind, []).append(item)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for kind in sorted(groups):
        chosen, rejected = [], []
        for i in range(0, len(groups[kind]), 64):
            c_ids, c_mask, r_ids, r_mask, _, _ = pad_pairs(groups[kind][i : i + 64], pad_id)
            chosen += model(c_ids.to(device), c_mask.to(device)).tolist()
            rejected += model(r_ids.to(device), r_mask.to(device)).tolist()
        out[kind] = {"accuracy": pairwise_accuracy(chosen, rejected), "pairs": len(chosen)}
    model.train(was_training)
    return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _trainer_kwargs(cfg, s: dict, log_dir, validate: bool) -> dict:
    from lightning.pytorch.loggers import CSVLogger

    callbacks = []
    bar = cfg is not None and (cfg.get("callbacks") or {}).get("rich_progress")
    if bar:
        callbacks.append(instantiate(cfg.callbacks.rich_progress))
    accelerator = cfg.trainer.accelerator if cfg is not None else "cpu"
    progress = cfg.trainer.get("enable_progress_bar", True) if cfg is not None else False
    steps = int(s["steps"])
    return {
        "max_steps": steps,
        "accelerator": accelerator,
        "devices": 1,
        "logger": CSVLogger(str(log_dir), name="", version=""),
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": progress,
        "callbacks": callbacks,
        "log_every_n_steps": 10,
        "val_check_interval": min(int(s["val_every"]), steps) if validate else None,
        "limit_val_batches": 1.0 if validate else 0,
        "num_sanity_val_steps": 0,
        "check_val_every_n_epoch": None,
    }


def learned_rewards(reward) -> list[LearnedReward]:
    """The learned rewards in ``reward``: itself, or the parts of a composite (at any depth)."""
    if isinstance(reward, LearnedReward):
        return [reward]
    if isinstance(reward, CompositeReward):
        return [r for part in reward.parts.values() for r in learned_rewards(part.reward)]
    return []


def reward_model_stage(cfg: DictConfig, reward, suite) -> list[Path]:
    """The reward-model stage of a run (``agentrl.train.fit`` calls it before the policy is
    loaded): every learned reward in ``reward`` gets its model. Returns the folders loaded."""
    return [prepare_reward_model(r, cfg, suite) for r in learned_rewards(reward)]


def prepare_reward_model(
    reward: LearnedReward, cfg: DictConfig, suite, retrain: bool = False
) -> Path:
    """Give ``reward`` its model: its ``checkpoint``, or the cached model of these settings, or
    one trained now (on ``cfg``'s pairs; logged in the run's ``reward_model/``) and cached.
    ``retrain``: train even when a checkpoint or a cached model exists (``mode=reward_model``).
    Returns the folder the model is in."""
    if reward.checkpoint and not retrain:
        reward.build()
        reward.load(reward.checkpoint)
        log.info("reward model: loaded %s", reward.checkpoint)
        reward.to_device()
        return Path(reward.checkpoint)
    folder = Path(reward.cache_dir) / cache_key(reward.identity(cfg))
    if (folder / "model.pt").is_file() and not retrain:
        reward.build()
        reward.load(folder)
        log.info("reward model: reusing the cached %s (%s)", folder, reward.summary())
    else:
        log.info("reward model: no checkpoint configured; training one (cached in %s)", folder)
        reward.build(_backbone_start(reward, cfg, suite))
        logs = Path(cfg.paths.output_dir) / "reward_model"
        reward.info = train(reward, cfg, suite, reward.training, folder, logs)
    reward.to_device()
    return folder


def _backbone_start(reward: LearnedReward, cfg: DictConfig, suite):
    """``init: warmstart``: the backbone starts from the run's supervised warm start (as
    InstructGPT starts its reward model from the SFT policy), which reads the env's format."""
    if reward.init != "warmstart":
        return None

    def start(net, tokenizer) -> None:
        log.info("reward model: backbone initialised from the policy's warm start")
        warm_start(cfg, stage_parts(cfg, suite), net, tokenizer)

    return start


def train_reward_model(cfg: DictConfig) -> dict[str, float]:
    """``python launch.py mode=reward_model``: the reward-model stage alone, training whatever
    is cached; the model is saved in the cache (where ``reward=learned`` finds it) and in the
    run directory."""
    L.seed_everything(cfg.seed, workers=True)
    reward = instantiate(cfg.reward, "reward")
    if not isinstance(reward, LearnedReward):
        raise ConfigError(f"mode=reward_model trains reward=learned, got {cfg.reward._target_}")
    suite = instantiate(cfg.env, "env")
    out = Path(cfg.paths.output_dir) / "reward_model"
    try:
        cached = prepare_reward_model(reward, cfg, suite, retrain=True)
    finally:
        close_suite(suite)
    info = reward.info
    reward.save(out, info)
    print(
        f"reward model: held-out pairwise accuracy {_fmt(info['val_accuracy'])}, correlation "
        f"with the env's success {_fmt(info['val_success_corr'])}; saved to {out} and {cached}"
    )
    return {k: float(v) for k, v in info.items() if isinstance(v, (int, float)) and v is not None}
