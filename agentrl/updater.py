"""The policy updater: what every training step does to the weights, whatever its loss.

``PolicyUpdater.step`` is one optimizer step on a minibatch of rows: the minibatch is cut into
micro-batches (gradient accumulation), each weighed by its share of the global minibatch (DDP and
FSDP average gradients over ranks), a rank with fewer micro-batches runs zero-weight passes so
that the ranks' backward passes stay in step, a non-finite loss or gradient skips the step (and is
counted), gradients are clipped by global norm. The step's loss comes from the caller, a function
of one micro-batch's forward (``LossFn``), so the RL and the preference steps share all of this.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agentrl import distributed as D
from agentrl import value as V
from agentrl.algorithms import functional as F
from agentrl.batching import TokenBatch, model_logprobs_chunked

# (logprobs [n, t], values [n, t] or None, the micro-batch's TokenBatch, rows, the micro-batch's
# row indices) -> (loss, named parts); ``rows`` picks the micro-batch's rows and columns of a
# per-step tensor ([N] or [N, T-1]; None stays None)
LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


class PolicyUpdater:
    """Owns the trainable modules' update: the policy (and the critic, when there is one).

    algorithm: gives ``aggregation`` (the micro-batch weights), ``max_grad_norm`` and, for the
    global KL, ``kl_estimator``; backward: the LightningModule's ``manual_backward``; device: a
    function that returns the module's current device; counters: the module's counters (a
    skipped update adds one to ``skipped_updates``).
    """

    def __init__(
        self,
        policy,
        critic,
        algorithm,
        micro_batch_size: int,
        temperature: float,
        pad_token_id: int | None,
        backward: Callable[[torch.Tensor], None],
        device: Callable[[], torch.device],
        counters: dict,
    ):
        self.policy = policy
        self.critic = critic
        self.algorithm = algorithm
        self.micro_batch_size = micro_batch_size
        self.temperature = temperature
        self.pad_token_id = pad_token_id
        self.backward = backward
        self.device = device
        self.counters = counters

    def trainable(self) -> list[torch.nn.Parameter]:
        """The policy's trainable parameters, then the critic's (if any)."""
        modules = [self.policy] if self.critic is None else [self.policy, self.critic]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- forwards without grad
    def logprobs(self, model, batch: TokenBatch) -> torch.Tensor:
        """[N, T-1] tempered log-probs of ``model`` (the policy or the reference), micro-batched."""
        return model_logprobs_chunked(model, batch, self.micro_batch_size, self.temperature)

    def logprobs_and_values(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, T-1] log-probs of the policy and values of the critic, micro-batched."""
        return V.forward_chunked(
            self.policy, self.critic, batch, self.micro_batch_size, self.temperature
        )

    # ----------------------------------------------------------------- the optimizer step
    def step(self, opt, batch: TokenBatch | None, mb: torch.Tensor, loss_fn: LossFn) -> dict:
        """One optimizer step on the rows ``mb`` of ``batch`` (None, with ``mb`` empty, on a rank
        left without rows: it still joins the collectives). Returns ``loss/<part>`` sums weighed
        by micro-batch, ``loss/grad_norm`` and ``loss/skipped_nonfinite``."""
        agg = self.algorithm.aggregation
        total = (
            F.aggregation_weight(batch.loss_mask[mb], agg)
            if len(mb)
            else torch.zeros((), device=self.device())
        )
        # DDP and FSDP average gradients over ranks: weigh by the share of the global minibatch
        world = D.world_size()
        total = (D.all_reduce(total).to(total) if world > 1 else total).clamp(min=1e-9)
        opt.zero_grad()
        out: dict[str, float] = {}
        finite = True
        micros = list(mb.split(self.micro_batch_size)) if len(mb) else []
        for micro in D.pad_micro_batches(micros) if world > 1 else micros:
            if not finite and world == 1:
                break
            if micro is None or not finite:
                # keeps this rank's backward passes in step with the other ranks'
                self.zero_pass(batch)
                continue
            sub, rows = self.micro_batch(batch, micro)
            weight = world * float(F.aggregation_weight(sub.loss_mask, agg) / total)
            logp, entropy, values = V.forward(self.policy, self.critic, sub, self.temperature)
            loss, parts = loss_fn(logp, values, sub, rows, micro)
            if not torch.isfinite(loss):
                finite = False
                self.backward((logp.sum() if values is None else logp.sum() + values.sum()) * 0.0)
                continue
            self.backward(loss * weight)
            m = sub.loss_mask
            parts["entropy"] = (entropy.detach() * m).sum() / m.sum().clamp(min=1)
            for k, v in parts.items():
                out[f"loss/{k}"] = out.get(f"loss/{k}", 0.0) + float(v) * weight
        return self._apply(opt, finite, world, out)

    def _apply(self, opt, finite: bool, world: int, out: dict) -> dict:
        """Clip and step, or skip (and count) a non-finite loss or gradient; never apply it."""
        params = self.trainable()
        finite = D.all_ranks(finite) if world > 1 else finite
        norm = (
            D.full_value(torch.nn.utils.clip_grad_norm_(params, self.algorithm.max_grad_norm))
            if finite
            else None
        )
        if not finite or not torch.isfinite(norm):
            opt.zero_grad()
            self.counters["skipped_updates"] += 1
            return {"loss/skipped_nonfinite": 1.0}
        opt.step()
        out["loss/grad_norm"] = float(norm)
        out["loss/skipped_nonfinite"] = 0.0
        return out

    def micro_batch(self, batch: TokenBatch, micro: torch.Tensor):
        """The episodes ``micro`` of ``batch``, cut to their own longest episode (the batch is
        padded to the step's longest: a short micro-batch would compute padding), and a function
        that takes the same rows and columns of a per-step tensor ([N] or [N, T-1]; None stays
        None). Not cut under seq_mean_token_sum_norm without max_completion_length, whose
        divisor is the padded width."""
        sub = batch.select(micro)
        fixed_norm = self.algorithm.aggregation == "seq_mean_token_sum_norm" and (
            self.algorithm.max_completion_length is None
        )
        width = sub.input_ids.shape[1] if fixed_norm else sub.used_width()
        if width < sub.input_ids.shape[1]:
            sub = sub.narrow(width)

        def rows(x: torch.Tensor | None) -> torch.Tensor | None:
            if x is None:
                return None
            return x[micro] if x.dim() == 1 else x[micro, : width - 1]

        return sub, rows

    def zero_pass(self, batch: TokenBatch | None) -> None:
        """A forward and backward that adds nothing to the gradients (weight 0)."""
        if batch is None:
            pad = self.pad_token_id or 0
            device = self.device()
            ids = torch.full((1, 2), pad, dtype=torch.long, device=device)
            zeros = torch.zeros((1, 1), device=device)
            batch = TokenBatch(ids, torch.ones_like(ids), zeros, zeros)
        sub = batch.select(torch.arange(1, device=batch.input_ids.device))
        logp, _, values = V.forward(self.policy, self.critic, sub, self.temperature)
        self.backward((logp.sum() if values is None else logp.sum() + values.sum()) * 0.0)

    # ----------------------------------------------------------------- KL to the reference
    def global_kl(self, old: torch.Tensor | None, ref: torch.Tensor | None, mask) -> float:
        """Mean sequence KL of ``old`` to ``ref`` ([N, T-1] each, None on a rank without
        episodes) over the episodes of all ranks."""
        kl = (
            F.sequence_kl(old, ref, mask, self.algorithm.kl_estimator)
            if old is not None
            else torch.zeros(0)
        )
        if not D.is_distributed():
            return float(kl.mean())
        total, n = D.all_reduce(float(kl.sum())), D.all_reduce(len(kl))
        return float(total / n.clamp(min=1))
