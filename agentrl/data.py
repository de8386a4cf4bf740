"""Tasks as a LightningDataModule: one training batch = the tasks of one RL step.

The training stream is a deterministic function of (seed, step): the tasks of step k are the
k-th slice of a seeded permutation of the train split (re-drawn each pass over the split). Each
batch carries its step index; the module counts the steps it consumed, saves that count in its
checkpoint and sets ``position`` from it on resume (the stream's own position runs ahead by the
batch Lightning prefetches), so a resumed run sees exactly the tasks of the uninterrupted run.
Under DDP each rank takes its contiguous share of the step's tasks.
"""

from __future__ import annotations

import random

import lightning as L

from agentrl.types import Task


class TaskStream:
    """Yields ``steps`` batches of ``tasks_per_step // world_size`` tasks each."""

    def __init__(self, tasks: list[Task], tasks_per_step: int, steps: int, seed: int):
        self.tasks = tasks
        self.tasks_per_step = tasks_per_step
        self.steps = steps
        self.seed = seed
        self.position = 0
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> None:
        if self.tasks_per_step % world_size:
            raise ValueError(
                f"data.tasks_per_step={self.tasks_per_step} must be divisible by the number of "
                f"processes ({world_size})"
            )
        self.rank, self.world_size = rank, world_size

    def step_tasks(self, step: int) -> list[Task]:
        """The global batch of step ``step`` (all ranks), deterministic."""
        n = len(self.tasks)
        out = []
        for j in range(step * self.tasks_per_step, (step + 1) * self.tasks_per_step):
            epoch, offset = divmod(j, n)
            order = list(range(n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            out.append(self.tasks[order[offset]])
        return out

    def __len__(self) -> int:
        # the whole epoch: Lightning's restored loop counts the batches already done
        return self.steps

    def batch(self, step: int) -> dict:
        """This rank's batch of step ``step``: {"step", "tasks"}."""
        share = self.tasks_per_step // self.world_size
        tasks = self.step_tasks(step)[self.rank * share : (self.rank + 1) * share]
        return {"step": step, "tasks": tasks}

    def __iter__(self):
        while self.position < self.steps:
            step = self.position
            self.position += 1
            yield self.batch(step)


class TaskBatches:
    """A fixed sequence of task batches (one iterable, as Lightning expects of a dataloader)."""

    def __init__(self, batches: list[list[Task]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class TaskDataModule(L.LightningDataModule):
    """train: the RL stream; val: the first ``num_val_tasks`` of the val split, in batches."""

    def __init__(
        self, tasks_per_step: int, steps: int, num_val_tasks: int, val_batch_size: int, seed: int
    ):
        super().__init__()
        for name, value in [
            ("tasks_per_step", tasks_per_step),
            ("steps", steps),
            ("num_val_tasks", num_val_tasks),
            ("val_batch_size", val_batch_size),
        ]:
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        self.tasks_per_step = tasks_per_step
        self.steps = steps
        self.num_val_tasks = num_val_tasks
        self.val_batch_size = val_batch_size
        self.seed = seed
        self.suite = None
        self.stream: TaskStream | None = None

    def bind(self, suite) -> None:
        self.suite = suite

    def setup(self, stage: str | None = None) -> None:
        if self.stream is None:
            self.stream = TaskStream(
                self.suite.tasks("train"), self.tasks_per_step, self.steps, self.seed
            )
        if self.trainer is not None:
            self.stream.shard(self.trainer.global_rank, self.trainer.world_size)

    def train_dataloader(self):
        return self.stream

    def val_dataloader(self):
        tasks = self.suite.tasks("val")[: self.num_val_tasks]
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        mine = tasks[rank::world]
        return TaskBatches(
            [mine[i : i + self.val_batch_size] for i in range(0, len(mine), self.val_batch_size)]
        )
