"""ReplayBuffer: bounded capacity, the statistics by hand, and the checkpoint round trip."""

from __future__ import annotations

import random

import pytest

from agentrl.buffer import ReplayBuffer
from agentrl.types import Task, Trajectory, Turn


def traj(i: int) -> Trajectory:
    return Trajectory(
        task=Task(id=f"t/{i}", prompt=f"p{i}", answer=i, meta={"d": i}),
        token_ids=[1, 2, 3, 4],
        loss_mask=[0, 1, 1, 0],
        logprobs=[0.0, -0.5, -0.25, 0.0],
        prompt_len=1,
        turns=[Turn(action=f"a{i}", observation="o", reward=0.5, span=(1, 3), info={"x": 1})],
        reward=float(i),
        reward_components={"r": float(i)},
        success=i % 2 == 0,
        group=i,
    )


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)


def test_bounded_capacity_drops_the_oldest_and_counts_them():
    buf = ReplayBuffer(capacity=3)
    buf.add([traj(0), traj(1)], step=1)
    assert buf.dropped == 0
    buf.add([traj(2), traj(3)], step=2)
    assert buf.dropped == 1
    buf.add([traj(4), traj(5), traj(6), traj(7)], step=3)
    assert buf.dropped == 5
    assert [t.task.id for t in buf.drain(3)] == ["t/5", "t/6", "t/7"]
    assert buf.stats()["buffer/dropped"] == 5.0


def test_stats_by_hand():
    buf = ReplayBuffer(capacity=10)
    assert buf.stats() == {
        "buffer/size": 0.0,
        "buffer/sample_age": 0.0,
        "buffer/drained": 0.0,
        "buffer/dropped": 0.0,
        "buffer/reuse_mean": 0.0,
        "buffer/stale_dropped": 0.0,
    }
    buf.add([traj(0), traj(1)], step=1)
    buf.add([traj(2)], step=3)
    assert buf.stats()["buffer/size"] == 3.0
    out = buf.drain(step=4)
    assert [t.task.id for t in out] == ["t/0", "t/1", "t/2"]
    # ages 3, 3, 1; each used once
    assert buf.stats() == {
        "buffer/size": 0.0,
        "buffer/sample_age": pytest.approx(7 / 3),
        "buffer/drained": 3.0,
        "buffer/dropped": 0.0,
        "buffer/reuse_mean": 1.0,
        "buffer/stale_dropped": 0.0,
    }


def test_reuse_counts_every_update_a_trajectory_was_used_in():
    buf = ReplayBuffer(capacity=10)
    buf.add([traj(0), traj(1)], step=1)
    rng = random.Random(0)
    assert len(buf.sample(2, step=1, rng=rng)) == 2  # both: used once
    assert buf.stats()["buffer/reuse_mean"] == 1.0
    buf.sample(1, step=2, rng=rng)  # one of them: now used twice
    assert buf.stats()["buffer/reuse_mean"] == 2.0
    assert buf.stats()["buffer/size"] == 2.0
    buf.add([traj(2)], step=2)
    buf.drain(step=3)  # 3 + 2 + 1 uses over three trajectories
    assert buf.stats()["buffer/reuse_mean"] == pytest.approx(2.0)
    assert buf.stats()["buffer/drained"] == 3.0


def test_state_round_trip():
    buf = ReplayBuffer(capacity=4)
    buf.add([traj(i) for i in range(6)], step=2)
    buf.sample(2, step=3, rng=random.Random(1))
    state = buf.state_dict()
    other = ReplayBuffer(capacity=4)
    other.load_state_dict(state)
    assert other.dropped == buf.dropped == 2
    assert other.stats() == buf.stats()
    assert [list(it) for it in other.items] == [list(it) for it in buf.items]
    assert isinstance(other.items[0][1].turns[0].span, tuple)
    assert other.state_dict() == state
    assert [t.task.id for t in other.drain(5)] == [t.task.id for t in buf.drain(5)]
    assert other.stats() == buf.stats()


def test_loads_a_checkpoint_from_before_the_reuse_counter():
    buf = ReplayBuffer(capacity=4)
    buf.add([traj(0)], step=1)
    state = buf.state_dict()
    old = {"items": [(it[0], it[1]) for it in state["items"]], "dropped": 0}
    other = ReplayBuffer(capacity=4)
    other.load_state_dict(old)
    assert other.drain(2)[0] == traj(0)
    assert other.stats()["buffer/reuse_mean"] == 1.0


def test_take_drops_stale_samples_and_bounds_reuse():
    buf = ReplayBuffer(capacity=10)
    buf.add([traj(0)], step=0, version=0)
    buf.add([traj(1), traj(2)], step=1, version=0)
    buf.add([traj(3)], step=2, version=1)
    # at step 2 with max_staleness 1: version 0 is 2 steps old, dropped (3 samples)
    got = buf.take(step=2, max_staleness=1, max_reuse=2)
    assert [(t.task.id, s, v) for t, s, v in got] == [("t/3", 2, 1)]
    assert buf.stale_dropped == 3
    assert buf.stats()["buffer/stale_dropped"] == 3.0
    # used once of twice: still held; at step 3 (staleness 2) it would be dropped, at
    # max_staleness 2 it is taken a second time and then leaves
    assert [t.task.id for t, _, _ in buf.take(step=3, max_staleness=2, max_reuse=2)] == ["t/3"]
    assert buf.stats()["buffer/reuse_mean"] == 2.0
    assert len(buf.items) == 0
    assert buf.take(step=3, max_staleness=2, max_reuse=2) == []


def test_take_once_empties_the_buffer_and_versions_round_trip():
    buf = ReplayBuffer(capacity=10)
    buf.add([traj(0), traj(1)], step=4, version=3)
    other = ReplayBuffer(capacity=10)
    other.load_state_dict(buf.state_dict())
    assert [it[3] for it in other.items] == [3, 3]
    assert [v for _, _, v in other.take(step=4, max_staleness=1, max_reuse=1)] == [3, 3]
    assert len(other.items) == 0 and other.stale_dropped == 0
