"""agentrl.distributed with two real gloo processes (fast): metric reduction, collective padding."""

from __future__ import annotations

import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from agentrl import distributed as D


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # rank 0: 4 episodes, reward 1.0; rank 1: 12 episodes, reward 0.0, and a key of its own
        metrics = {
            "rollout/reward_mean": [1.0, 0.0][rank],
            "rollout/failed_episodes": [1.0, 2.0][rank],
            "loss/skipped_updates_total": [3.0, 3.0][rank],
            "perf/rollout_s": [5.0, 7.0][rank],
        }
        if rank == 1:
            metrics["loss/skipped_zero_adv"] = 1.0
        reduced = D.reduce_metrics(metrics, episodes=[4, 12][rank])
        # rank 0 has 1 micro-batch, rank 1 has 3: both run 3 passes
        padded = D.pad_micro_batches([object()] * [1, 3][rank])
        flags = (D.any_rank(rank == 1), D.all_ranks(rank == 1), float(D.all_reduce(rank + 1)))
        with open(f"{out}/{rank}.txt", "w") as f:
            f.write(repr((reduced, [p is None for p in padded], flags)))
    finally:
        dist.destroy_process_group()


def test_reduce_metrics_and_padding_across_two_processes(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    results = [eval((tmp_path / f"{r}.txt").read_text()) for r in (0, 1)]
    assert results[0][0] == results[1][0], "every rank must see the same reduced metrics"
    assert results[0][2] == results[1][2]
    reduced, padded0, flags = results[0]
    # episode means weighted by episodes: (4 * 1.0 + 12 * 0.0) / 16
    assert reduced["rollout/reward_mean"] == pytest.approx(0.25)
    assert reduced["rollout/failed_episodes"] == 3.0  # a count: summed
    assert reduced["loss/skipped_updates_total"] == 6.0  # totals: summed
    assert reduced["perf/rollout_s"] == 7.0  # the slowest rank
    assert reduced["loss/skipped_zero_adv"] == 1.0  # a key only one rank had
    assert padded0 == [False, True, True]  # rank 0 pads its 1 pass to 3
    assert results[1][1] == [False, False, False]
    assert flags == (True, False, 3.0)


def test_alone_everything_is_the_identity():
    metrics = {"rollout/reward_mean": 0.5}
    assert D.reduce_metrics(metrics, 3) is metrics
    assert D.pad_micro_batches([1, 2]) == [1, 2]
    assert D.world_size() == 1 and D.any_rank(True) and not D.all_ranks(False)
