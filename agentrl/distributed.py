"""Data-parallel helpers of the RL loop (``trainer=ddp`` and ``trainer=fsdp``).

Each rank collects its own share of the step's tasks (whole groups: ``TaskStream`` splits tasks,
and a task's ``group_size`` episodes are sampled on the rank that holds it), so group advantages
are computed over complete groups without any exchange. What crosses ranks:

- the loss normaliser: each micro-batch's loss is weighted by its share of the *global*
  minibatch, so the averaged gradient equals the gradient of the single-process loss over the
  global batch (exact for ``algorithm.minibatches=1``; with several minibatches each rank
  permutes its own episodes, so a global minibatch is a union of per-rank chunks);
- the number of forward/backward passes: DDP and FSDP reduce gradients inside ``backward``, so
  every rank runs the same number of passes per minibatch; a rank with fewer episodes (failed or
  dropped ones) runs zero-weight passes instead (``pad_micro_batches``);
- whether to update at all (any rank has a non-zero advantage; every rank's loss is finite);
- the metrics of a step (episode means weighted by episodes, counts summed).

With FSDP (``fully_shard``) every forward all-gathers the parameters, which would deadlock in
generation, where ranks take different numbers of decoding steps: ``gathered`` keeps the
parameters unsharded for the no-grad phases (rollout, scoring, validation).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce(value: float | torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A scalar (or tensor) reduced over ranks: ``sum``, ``max`` or ``min``; a copy when alone."""
    t = torch.as_tensor(value, dtype=torch.float64).clone()
    if not is_distributed():
        return t
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = t.to(device)
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(t, op=ops[op])
    return t.cpu()


def any_rank(flag: bool) -> bool:
    return bool(all_reduce(float(flag), "max") > 0)


def all_ranks(flag: bool) -> bool:
    return bool(all_reduce(float(flag), "min") > 0)


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` when alone)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# metrics of a step that are counts (summed over ranks), or peaks (max); the rest are episode
# means, weighted by each rank's number of episodes
SUM_METRICS = ("rollout/failed_episodes", "rollout/reward_errors", "rollout/dropped_groups")
MAX_METRICS = ("perf/", "loss/skipped_")


def reduce_metrics(metrics: dict[str, float], episodes: int) -> dict[str, float]:
    """One rank's step metrics -> the metrics of the global batch (the same on every rank)."""
    if not is_distributed():
        return metrics
    parts = gather_objects((metrics, episodes))
    out: dict[str, float] = {}
    for key in sorted({k for m, _ in parts for k in m}):
        have = [(m[key], n) for m, n in parts if key in m]
        values = [v for v, _ in have]
        if key in SUM_METRICS or key.endswith("_total"):
            out[key] = float(sum(values))
        elif key.startswith(MAX_METRICS):
            out[key] = float(max(values))
        else:
            weight = sum(n for _, n in have)
            out[key] = (
                float(sum(v * n for v, n in have) / weight)
                if weight
                else float(sum(values) / len(values))
            )
    return out


def pad_micro_batches(micros: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """This rank's micro-batches, padded with ``None`` (a zero-weight pass) up to the largest
    count of any rank, so that every rank runs the same number of backward passes."""
    most = int(all_reduce(len(micros), "max"))
    return list(micros) + [None] * (most - len(micros))


# ----------------------------------------------------------------------------- FSDP2
def fsdp_modules(*modules) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [
        m for mod in modules if mod is not None for m in mod.modules() if isinstance(m, FSDPModule)
    ]


@contextlib.contextmanager
def gathered(*modules):
    """Within: the FSDP-sharded ``modules`` hold their full parameters, and forwards run without
    collectives (for no-grad phases whose number of forwards differs between ranks). Outside
    FSDP (DDP, a single process) a no-op."""
    sharded = fsdp_modules(*modules)
    for m in sharded:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in sharded:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def shard(module: torch.nn.Module, mesh) -> None:
    """FSDP2 ``fully_shard`` each transformer block, then the whole model (the root).

    mesh: Lightning's ``ModelParallelStrategy`` device mesh (data_parallel x tensor_parallel);
    with its ``auto`` sizes that is nodes x devices per node: parameters are sharded across the
    devices of a node and replicated across nodes (HSDP); one node is plain FSDP.
    """
    from torch.distributed.fsdp import fully_shard

    blocks = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList)]
    for layers in blocks[:1]:
        for layer in layers:
            fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (e.g. FSDP's gradient norm) as a plain tensor; a tensor unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ----------------------------------------------------------------------------- SLURM
def cluster_plugins(slurm_auto_requeue: bool = False) -> list:
    """The Trainer's ``plugins``: under SLURM (srun tasks), Lightning's SLURM environment with
    its own requeue switched off (submitit or SLURM owns requeue: slurm/README.md); elsewhere
    none, and Lightning detects the environment itself."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=slurm_auto_requeue)]
