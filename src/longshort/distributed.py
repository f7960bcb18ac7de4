"""Data-parallel training across processes: torch.distributed (gloo on CPU), launched by torchrun.

    torchrun --standalone --nproc-per-node=2 -m longshort train series.csv --out runs/series

torchrun starts the processes and gives each its place in the environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT). `process_group()` sees them and joins the group; without them it
yields `Replicas(rank=0, world_size=1)` and nothing below does anything. How the processes
split the work (`longshort.checkpoints.train_epochs` does it):

- every process reads the same data and draws the same shuffled global batches (one seed);
  each trains on its shard of every batch, rows rank, rank + W, rank + 2W, ... (W processes);
- the model is wrapped in DistributedDataParallel, which averages the gradients over the
  processes during backward; each shard's loss is weighted by n_r * W / B (n_r of the batch's B
  rows), so that the average is the gradient of the whole batch's mean loss: the step equals
  single-process training on the same global batch, up to the order of float sums;
- the step's loss is the whole batch's (all-reduced), so the non-finite guard decides alike
  in every process (the gradients it checks are already averaged);
- rank 0 alone reads a checkpoint to resume and hands weights, optimizer and training state
  to the others; rank 0 alone writes checkpoints, prints and draws; its validation loss decides
  early stopping for all; after every epoch the processes compare a hash of their weights.

Dropout draws its masks in each process from the same seed, so a run with dropout is not the
same as a single-process one (it is still correct data-parallel training).
"""

from __future__ import annotations

import gc
import hashlib
import os
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

Value = TypeVar("Value")


class DistributedError(RuntimeError):
    """The processes of a data-parallel run disagree (data, weights) or cannot start together."""


def launched() -> bool:
    """Whether this process was started by torchrun (or the like) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def main_process() -> bool:
    """Whether this process is the one that prints and writes (rank 0, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Replicas:
    """This process's place among `world_size` processes training one model on shards of each batch."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train with: DistributedDataParallel around it when there are several processes."""
        return DistributedDataParallel(model) if self.world_size > 1 else model

    def shard(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, float]:
        """This process's rows of a global batch, and the weight of their mean loss (n_r * W / B).
        A process left without rows (a batch smaller than W) computes one row's loss with weight 0."""
        if self.world_size == 1:
            return inputs, targets, 1.0
        mine = slice(self.rank, None, self.world_size)
        rows = len(range(len(inputs))[mine])
        if rows == 0:
            return inputs[:1], targets[:1], 0.0
        return inputs[mine], targets[mine], rows * self.world_size / len(inputs)

    def whole_batch_loss(self, local: Tensor) -> Tensor:
        """`local` (this shard's weighted loss) with the value of the whole batch's loss: the
        gradient stays the shard's (DDP averages those), the value is the mean over processes."""
        if self.world_size == 1:
            return local
        total = local.detach().clone()
        dist.all_reduce(total)
        return local + (total / self.world_size - local).detach()

    def from_main(self, value: Value) -> Value:
        """Rank 0's `value` (any picklable object), in every process."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def start_together(self, model: nn.Module, optimizer: torch.optim.Optimizer, start: Callable[[], Any],
                       data_fingerprint: str) -> Any:
        """Run `start()` (which loads a checkpoint into model and optimizer, if there is one, and
        returns the training state) in rank 0, and give every process its result. An error in rank
        0 is raised in every process; so is a process that reads other data than rank 0."""
        if self.world_size == 1:
            return start()
        if ranks := self._differing_from_main(data_fingerprint):
            raise DistributedError(f"processes {ranks} read other training data than process 0: give every process the same file")
        outcome: Any = None
        if self.main:
            try:
                outcome = (start(), model.state_dict(), optimizer.state_dict())
            except Exception as error:  # every process must hear of it, or the others wait forever
                outcome = error
        outcome = self.from_main(outcome)
        if isinstance(outcome, Exception):
            raise outcome
        state, weights, optimizer_state = outcome
        if not self.main:
            model.load_state_dict(weights)
            optimizer.load_state_dict(optimizer_state)
        return state

    def check_identical(self, model: nn.Module, epoch: int) -> None:
        """Raise DistributedError unless every process holds the same weights (compared by hash)."""
        if self.world_size == 1:
            return
        if ranks := self._differing_from_main(weights_digest(model)):
            raise DistributedError(f"after epoch {epoch} the weights of processes {ranks} differ from process 0's")

    def _differing_from_main(self, value: str) -> list[int]:
        """The ranks whose `value` differs from rank 0's (every process learns them all)."""
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return [rank for rank, seen in enumerate(values) if seen != values[0]]


def weights_digest(model: nn.Module) -> str:
    """A hash of the model's parameters and buffers, bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def process_group(timeout_minutes: float = 10.0) -> Iterator[Replicas]:
    """Join the process group torchrun describes (gloo backend), and leave it at the end; a group
    the caller already made is used as it is; without torchrun, a single process."""
    if dist.is_available() and dist.is_initialized():
        yield Replicas(dist.get_rank(), dist.get_world_size())
        return
    if not launched():
        yield Replicas()
        return
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed: run a single process")
    try:
        dist.init_process_group("gloo", timeout=timedelta(minutes=timeout_minutes))
    except (RuntimeError, ValueError) as error:
        raise DistributedError(f"cannot join the process group torchrun describes ({str(error).splitlines()[0]})") from None
    try:
        yield Replicas(dist.get_rank(), dist.get_world_size())
    except BaseException as error:
        # The traceback keeps the failed run's frames alive, and with them its DistributedDataParallel
        # wrapper, whose reducer holds the group: let go of them first, or the group's threads can
        # outlive the group and abort the process at exit (exit -6 instead of the error's 1).
        traceback.clear_frames(error.__traceback__)
        gc.collect()
        raise
    finally:
        dist.destroy_process_group()
