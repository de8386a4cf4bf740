"""``reward=learned``: a reward model (a transformer backbone with a scalar head) trained with the
Bradley-Terry loss on preference pairs, then used as the reward.

An episode is shown to the reward model as text rendered through its own tokenizer's chat
template: the task, then each action (assistant turn) and each
observation, so any backbone tokenizer works and pairs from a JSONL file look exactly like
rollouts. The score is the head's value at the last token.

The reward-model stage (``agentrl.rewards.training.reward_model_stage``, run by ``fit`` before
the policy is loaded) gives this reward its model: ``checkpoint`` when one is configured, else
the cached model of these settings, else one it trains now and caches under
``cache_dir/<hash of its settings and the env's>``; the next run with the same settings reuses it.
The reward only loads or holds what the stage produced.

Reward hacking monitor: with each scored batch ``metrics()`` compares the learned reward with
the env verifier's outcome (``reward/rm_success_auc``: the probability that a successful episode
outscores a failed one; ``reward/rm_success_corr``; ``reward/rm_hack_rate``: the share of failed
episodes scored above the mean successful one). A policy that games the reward model drives the
learned reward up while these fall.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from agentrl.protocols import Reward
from agentrl.rewards.base import RewardOutput
from agentrl.rollout.chat import ChatFormat
from agentrl.types import Task, Trajectory, Turn
from agentrl.utils.instantiate import instantiate
from agentrl.warmstart import warmstart_identity

log = logging.getLogger(__name__)


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, center_coef: float = 0.0
) -> torch.Tensor:
    """Mean over pairs of ``-log sigmoid(r_chosen - r_rejected)`` (the negative log-likelihood of
    the preference under the Bradley-Terry model), plus ``center_coef * mean((r_c + r_r)^2)``,
    which keeps the scores centred on 0 (the loss alone is shift-invariant). chosen, rejected: [B].
    """
    loss = -F.logsigmoid(chosen - rejected).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss


class RewardModel(nn.Module):
    """backbone: a causal LM (its last hidden state at the last token feeds a linear head) or a
    ``*ForSequenceClassification`` model with one label (its own head is the score)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.classifier = type(backbone).__name__.endswith("ForSequenceClassification")
        if self.classifier:
            if backbone.config.num_labels != 1:
                raise ValueError("a sequence-classification reward model needs num_labels=1")
            self.head = None
        else:
            self.head = nn.Linear(backbone.config.hidden_size, 1)
            nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(backbone.config.hidden_size))
            nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: [B, T], left-padded (the last column is every sequence's
        last token). Returns the scores [B]."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        if self.classifier:
            return self.backbone(**kwargs).logits[:, 0].float()
        out = self.backbone(**kwargs, position_ids=position_ids, output_hidden_states=True)
        return self.head(out.hidden_states[-1][:, -1].float()).squeeze(-1)


class EpisodeEncoder:
    """Episodes (task + turns, as text) -> left-padded token batches for a reward model."""

    def __init__(self, tokenizer, max_len: int = 512, system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.chat = ChatFormat(tokenizer)
        self.max_len = max_len
        self.system_prompt = system_prompt

    def ids(self, task: Task, turns: list[Turn]) -> list[int]:
        """The task's tokens, then the episode's; when longer than ``max_len``, the task (at
        most half of ``max_len``) and the end of the episode (where its outcome is) are kept."""
        head = self.chat.prompt_ids(self.system_prompt, task.prompt)[: self.max_len // 2]
        body: list[int] = []
        for t in turns:
            body += self.chat.action_ids(t.action)
            if t.observation:
                body += self.chat.observation_ids(t.observation)
        keep = self.max_len - len(head)
        return head + (body[-keep:] if keep > 0 else [])

    def batch(self, episodes: list[tuple[Task, list[Turn]]]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [self.ids(task, turns) for task, turns in episodes]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        return ids, mask


@torch.no_grad()
def score_episodes(
    model: RewardModel, encoder: EpisodeEncoder, episodes: list, batch_size: int = 64
) -> list[float]:
    """Scores of ``(task, turns)`` episodes, in order, without gradients."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(episodes), batch_size):
        ids, mask = encoder.batch(episodes[i : i + batch_size])
        out.extend(model(ids.to(device), mask.to(device)).tolist())
    model.train(was_training)
    return out


# ------------------------------------------------------------------------------ training module


def pairwise_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """The share of pairs whose chosen episode scores higher (a tie counts half)."""
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]
    return sum(wins) / max(len(wins), 1)


def success_auc(scores: list[float], success: list[bool]) -> float:
    """P(score of a successful episode > score of a failed one), ties half; NaN without both."""
    pos = [s for s, ok in zip(scores, success) if ok]
    neg = [s for s, ok in zip(scores, success) if not ok]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation; NaN when either side is constant."""
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else math.nan


class RewardModelModule(L.LightningModule):
    """Bradley-Terry training of a RewardModel. A batch is ``(chosen_ids, chosen_mask,
    rejected_ids, rejected_mask)``; validation batches add the two success labels. Logs
    ``rm/loss``, ``rm/accuracy``, and on held-out pairs ``rm/val_accuracy``, ``rm/val_loss``
    and ``rm/val_success_corr`` (score vs the verifier's outcome)."""

    def __init__(
        self,
        model: RewardModel,
        lr: float,
        weight_decay: float,
        steps: int,
        warmup_steps: int,
        center_coef: float,
    ):
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.steps = steps
        self.warmup_steps = warmup_steps
        self.center_coef = center_coef
        self._val: dict[str, list] = {}

    def _pair_scores(self, batch):
        c_ids, c_mask, r_ids, r_mask = batch[:4]
        return self.model(c_ids, c_mask), self.model(r_ids, r_mask)

    def training_step(self, batch, batch_idx):
        chosen, rejected = self._pair_scores(batch)
        loss = bradley_terry_loss(chosen, rejected, self.center_coef)
        self.log("rm/loss", loss, prog_bar=True, on_step=True)
        self.log("rm/accuracy", (chosen > rejected).float().mean(), prog_bar=True, on_step=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"chosen": [], "rejected": [], "c_ok": [], "r_ok": []}

    def validation_step(self, batch, batch_idx):
        chosen, rejected = self._pair_scores(batch)
        self._val["chosen"] += chosen.tolist()
        self._val["rejected"] += rejected.tolist()
        self._val["c_ok"] += batch[4].tolist()
        self._val["r_ok"] += batch[5].tolist()

    def on_validation_epoch_end(self) -> None:
        v = self._val
        if not v["chosen"]:
            return
        c, r = torch.tensor(v["chosen"]), torch.tensor(v["rejected"])
        self.log("rm/val_accuracy", pairwise_accuracy(v["chosen"], v["rejected"]), prog_bar=True)
        self.log("rm/val_loss", float(bradley_terry_loss(c, r)))
        scores, ok = v["chosen"] + v["rejected"], v["c_ok"] + v["r_ok"]
        corr = pearson(scores, [float(x) for x in ok])
        self.log("rm/val_success_corr", corr if math.isfinite(corr) else 0.0)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

        def factor(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ------------------------------------------------------------------------------ the reward


def spec_identity(obj):
    """A JSON-able description of settings (objects by their class and attributes), for cache
    keys: the same settings give the same description in every process."""
    if isinstance(obj, dict):
        return {str(k): spec_identity(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [spec_identity(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    cls = f"{type(obj).__module__}.{type(obj).__qualname__}"
    return {"class": cls, **{k: spec_identity(v) for k, v in vars(obj).items()}}


class LearnedReward(Reward):
    """backbone: a model spec (``conf/model`` style; ``load() -> (model, tokenizer)``).
    checkpoint: a saved reward model folder (``model.pt``); null: the reward-model stage trains one.
    training: the settings of ``agentrl.rewards.training.train`` (pairs, steps, lr, ...).
    cache_dir: where trained reward models are cached by their settings. batch_size: episodes
    per forward pass when scoring. max_len: tokens of an episode the model sees (its end).
    scale: the score is multiplied by this. device: auto (the GPU when there is one) or a name.
    """

    name = "learned"

    def __init__(
        self,
        backbone,
        checkpoint: str | None = None,
        training: dict | None = None,
        cache_dir: str = ".cache/reward_models",
        batch_size: int = 64,
        max_len: int = 512,
        scale: float = 1.0,
        device: str = "auto",
        init: str = "scratch",
    ):
        if not hasattr(backbone, "load"):
            raise ValueError("reward.backbone must be a model spec (a config with _target_)")
        if init not in ("scratch", "warmstart"):
            raise ValueError(f"reward.init must be scratch or warmstart, got {init!r}")
        if batch_size < 1 or max_len < 8:
            raise ValueError("reward.batch_size must be >= 1 and reward.max_len >= 8")
        self.backbone = backbone
        self.checkpoint = checkpoint
        self.training = dict(training or {})
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.max_len = max_len
        self.scale = float(scale)
        self.device = device
        self.init = init
        self.model: RewardModel | None = None
        self.encoder: EpisodeEncoder | None = None
        self.info: dict = {}
        self._last: dict[str, float] = {}

    # -------------------------------------------------------------- set-up
    def identity(self, cfg) -> dict:
        """Everything that shapes the trained model: its cache key is a hash of this."""
        from agentrl.utils.instantiate import to_container

        out = {
            "backbone": spec_identity(self.backbone),
            "training": spec_identity(self.training),
            "max_len": self.max_len,
            "init": self.init,
            "env": to_container(cfg.env),
        }
        if self.init == "warmstart":
            # the warm start's own cache key: what the backbone starts from (null: none)
            ws = instantiate(cfg.warmstart, "warmstart")
            out["warmstart"] = ws.key(warmstart_identity(cfg)) if ws.enabled else None
        return out

    def build(self, warm_start=None) -> RewardModel:
        """A fresh reward model on the backbone, and the episode encoder (the env's system
        prompt is left out: it is the same in every episode). ``warm_start(net, tokenizer)``,
        when given, initialises the backbone first (the reward-model stage passes the run's
        warm start for ``init: warmstart``)."""
        net, tokenizer = self.backbone.load()
        if warm_start is not None:
            warm_start(net, tokenizer)
        self.model = RewardModel(net)
        self.encoder = EpisodeEncoder(tokenizer, self.max_len)
        return self.model

    def to_device(self) -> None:
        name = self.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(name).eval()

    def summary(self) -> str:
        acc = self.info.get("val_accuracy")
        return "no metrics" if acc is None else f"held-out pairwise accuracy {acc:.3f}"

    def save(self, folder: str | Path, info: dict) -> None:
        """``model.pt`` (the RewardModel's state dict) and ``info.json``, each written whole."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / "model.pt.tmp")
        (folder / "info.json.tmp").write_text(json.dumps(info, indent=2, default=str))
        (folder / "info.json.tmp").replace(folder / "info.json")
        (folder / "model.pt.tmp").replace(folder / "model.pt")
        self.info = info

    def load(self, folder: str | Path) -> None:
        folder = Path(folder)
        weights = folder / "model.pt" if folder.is_dir() else folder
        if not weights.is_file():
            raise FileNotFoundError(f"reward.checkpoint: {weights} does not exist")
        if self.model is None:
            self.build()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        info = weights.parent / "info.json"
        self.info = json.loads(info.read_text()) if info.is_file() else {}

    # -------------------------------------------------------------- the reward
    def __call__(self, task: Task, trajectory: Trajectory) -> RewardOutput:
        return self.score_batch([trajectory])[0]

    def score_batch(self, trajectories: list[Trajectory]) -> list[RewardOutput]:
        if self.model is None:
            raise RuntimeError(
                "the reward model is not loaded (the reward-model stage did not run)"
            )
        episodes = [(t.task, t.turns) for t in trajectories]
        scores = [self.scale * s for s in score_episodes(self.model, self.encoder, episodes)]
        self._monitor(scores, [bool(t.success) for t in trajectories])
        return [RewardOutput(s, {"learned": s}) for s in scores]

    def _monitor(self, scores: list[float], success: list[bool]) -> None:
        won = [s for s, ok in zip(scores, success) if ok]
        lost = [s for s, ok in zip(scores, success) if not ok]
        mean_won = sum(won) / len(won) if won else math.nan
        self._last = {
            "reward/rm_success_auc": success_auc(scores, success),
            "reward/rm_success_corr": pearson(scores, [float(x) for x in success]),
            "reward/rm_score_success": mean_won,
            "reward/rm_score_failure": sum(lost) / len(lost) if lost else math.nan,
            "reward/rm_hack_rate": (
                sum(s > mean_won for s in lost) / len(lost) if lost and won else math.nan
            ),
        }

    def metrics(self) -> dict[str, float]:
        return dict(self._last)
