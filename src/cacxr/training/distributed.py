"""Data-parallel training over several processes and machines, launched with ``torchrun``.

``cacxr train`` needs no special flag: started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), :func:`session` joins the process group (NCCL on
GPUs, gloo on CPUs) and every process trains the same folds in step:

- each optimisation step takes the same global batch of ``--batchsize`` images as a one-process run and
  splits it between the processes (:class:`ShardedBatchSampler`); each process's loss is weighted by its
  share of the batch, so the averaged gradient is the one-process gradient. No image is repeated or
  dropped: a process whose share of a step is empty runs the step on the batch with weight zero, so that
  every process takes part in every gradient all-reduce (and optimizer states stay identical);
- validation and test images are split between the processes too and the outputs gathered
  (:meth:`DistContext.gather_rows`), so every process picks the same best epoch;
- rank 0 alone writes files (config, folds, checkpoints, models, metrics, report); the image store and
  the feature cache are built by rank 0 first while the others wait (:meth:`DistContext.main_first`).

BatchNorm layers that train see the statistics of their own process's share of the batch (as in any
DistributedDataParallel run): a multi-process run equals a one-process run up to rounding only when no
BatchNorm layer trains (e.g. ``--finetune head``); otherwise it is a different, equally valid, training
run. The same seed and number of processes always give the same results.

Without ``torchrun`` (or with ``WORLD_SIZE=1``) everything here is a no-op: :class:`DistContext` of one
process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import BatchSampler, RandomSampler, Sampler, SequentialSampler

from cacxr.core import CacxrError

__all__ = [
    "DistContext",
    "LaunchEnv",
    "ShardedBatchSampler",
    "TailModule",
    "current",
    "launch_env",
    "launch_rank",
    "session",
    "split_evenly",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a process waits for the others at a collective (e.g. while rank 0 builds the feature cache).
DEFAULT_TIMEOUT_S = 3 * 3600


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a ``torchrun`` launch (read from its environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_env(environ: dict[str, str] | None = None) -> LaunchEnv | None:
    """The launch described by torchrun's environment variables, or None when not launched by it.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        The ranks, or None when ``WORLD_SIZE`` is not set.

    Raises:
        CacxrError: the variables are inconsistent (non-integer, rank out of range, no rendezvous address).
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        shown = {k: env.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
        raise CacxrError(f"torchrun environment variables are not integers: {shown}") from None
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise CacxrError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}, "
            f"LOCAL_WORLD_SIZE={local_world}"
        )
    if world > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise CacxrError(
            f"WORLD_SIZE={world} is set but MASTER_ADDR/MASTER_PORT are not: launch several processes with "
            "torchrun (e.g. torchrun --nproc-per-node 4 -m cacxr train ...), or unset WORLD_SIZE"
        )
    return LaunchEnv(rank, world, local_rank, local_world)


def launch_rank() -> int:
    """This process's rank under torchrun (0 otherwise); valid before and after :func:`session`."""
    return int(os.environ.get("RANK", "0") or 0)


def split_evenly(items: Sequence[T], parts: int) -> list[list[T]]:
    """Split ``items`` into ``parts`` contiguous chunks whose sizes differ by at most one, larger first.

    Args:
        items: what to split, in order.
        parts: number of chunks (the world size).

    Returns:
        ``parts`` lists; their concatenation is ``items``. Chunks at the end are empty when
        ``len(items) < parts``.
    """
    base, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for index in range(parts):
        stop = start + base + (index < extra)
        chunks.append(list(items[start:stop]))
        start = stop
    return chunks


class ShardedBatchSampler(Sampler[list[int]]):
    """This process's share of each global training batch, with the loss weight that keeps gradients exact.

    The global batches are exactly those of a one-process ``DataLoader(shuffle=True, generator=g,
    batch_size=B, drop_last=...)`` (same permutation from ``generator``); each is split with
    :func:`split_evenly` and this process gets chunk ``rank``. Pass the same generator to the DataLoader
    (``DataLoader(ds, batch_sampler=s, generator=g)``) so that it is drawn from in the same order.

    Args:
        n: dataset length.
        batch_size: global batch size (images per optimisation step, all processes together).
        rank: this process's rank.
        world_size: number of processes.
        generator: shuffles when given (every process must seed it alike); None keeps the order.
        drop_last: drop a last incomplete global batch.

    Attributes:
        global_sizes: images in each global batch (step).
        local_counts: images of each step that belong to this process (0: the step runs with weight 0).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid sharding: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        order = range(n)
        base = RandomSampler(order, generator=generator) if generator is not None else SequentialSampler(order)
        self._batches = BatchSampler(base, batch_size, drop_last)
        self.rank, self.world_size = rank, world_size
        full, rest = divmod(n, batch_size)
        self.global_sizes = [batch_size] * full + ([rest] if rest and not drop_last else [])
        self.local_counts = [len(split_evenly(range(size), world_size)[rank]) for size in self.global_sizes]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches:
            share = split_evenly(batch, self.world_size)[self.rank]
            # An empty share still joins the step (every all-reduce needs every process): it runs on the
            # whole global batch, weighted 0 (loss_scale), so no image counts twice.
            yield share or batch

    def __len__(self) -> int:
        return len(self.global_sizes)

    def loss_scale(self, step: int) -> float:
        """Factor of this process's mean loss at ``step``: its share of the batch times the world size.

        DistributedDataParallel averages gradients over processes, so the sum over processes of
        ``scale * mean loss / world_size`` is the mean loss over the global batch.
        """
        return self.local_counts[step] * self.world_size / self.global_sizes[step]


class TailModule(nn.Module):
    """A module whose forward is ``model.tail`` (what DistributedDataParallel wraps when features are cached)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.tail(features, clinical)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run; the one-process defaults make every method a no-op.

    Attributes:
        rank: global rank (0 writes the files).
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        local_world_size: processes on this machine (they share its CPUs).
        backend: ``nccl``, ``gloo`` or None (one process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def active(self) -> bool:
        """True with several processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (recorded in each fold.json)."""
        return {"world_size": self.world_size, "backend": self.backend}

    def local_device(self, device: torch.device) -> torch.device:
        """The device of this process: with several processes on CUDA, GPU ``LOCAL_RANK``.

        Raises:
            CacxrError: fewer GPUs on this machine than processes.
        """
        if not self.active or device.type != "cuda":
            return device
        available = torch.cuda.device_count()
        if self.local_rank >= available:
            raise CacxrError(
                f"process with LOCAL_RANK={self.local_rank} has no GPU (this machine has {available}); "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        return torch.device("cuda", self.local_rank)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.active:
            torch.distributed.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every process (any picklable object)."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: T) -> list[T]:
        """Every process's ``value``, in rank order (any picklable object)."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def sum(self, *values: float) -> tuple[float, ...]:
        """Element-wise sums over processes, added in rank order (the same on every process)."""
        gathered = self.all_gather(tuple(float(v) for v in values))
        return tuple(sum(parts) for parts in zip(*gathered, strict=True))

    def shard(self, n: int) -> list[int]:
        """This process's contiguous share of ``range(n)`` (for evaluation; see :meth:`gather_rows`)."""
        return split_evenly(range(n), self.world_size)[self.rank]

    def gather_rows(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every process's list of CPU tensors, concatenated in rank order (the inverse of :meth:`shard`)."""
        if not self.active:
            return rows
        return [tensor for part in self.all_gather(rows) for tensor in part]

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Run a block on rank 0 first, then on the others (which then find its results on disk).

        For shared files (ingest, image store, feature cache): the others wait at a barrier while rank 0
        builds them, then run the same code, which reuses what rank 0 wrote.
        """
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DistributedDataParallel with several processes (rank 0's weights are broadcast)."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)  # buffers synced at each forward

    def sync_buffers(self, module: nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics), e.g. before evaluating.

        DistributedDataParallel broadcasts them at the start of each forward, so after the last training
        step each process still holds the statistics of its own share.
        """
        if not self.active:
            return
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer.data, src=0)


def current() -> DistContext:
    """The context of the initialised default process group (one process when there is none)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    env = launch_env()
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=env.local_rank if env else 0,
        local_world_size=env.local_world_size if env else 1,
        backend=str(dist.get_backend()),
    )


@contextmanager
def session(device: torch.device | str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistContext]:
    """Join torchrun's process group for a block (NCCL on CUDA, gloo on the CPU) and leave it afterwards.

    A process group initialised by the caller is used as is (and left initialised). Without torchrun's
    variables (or with one process) the block runs with a one-process context. While the group is up,
    ranks other than 0 log warnings only, so that messages are not repeated once per process.

    Args:
        device: the device asked for (``--device`` resolved); its type chooses the backend.
        timeout_s: how long a collective may wait for the other processes.

    Yields:
        This process's context.

    Raises:
        CacxrError: inconsistent torchrun variables, or the process group cannot be formed.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        yield current()
        return
    env = launch_env()
    if env is None or env.world_size == 1:
        yield DistContext()
        return
    if not dist.is_available():
        raise CacxrError("this torch build has no torch.distributed: several processes cannot train together")
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    options: dict[str, Any] = {}
    if backend == "nccl":
        gpu = DistContext(env.rank, env.world_size, env.local_rank).local_device(device)  # enough GPUs here?
        torch.cuda.set_device(gpu)
        options["device_id"] = gpu  # binds the group to this GPU (barriers and object collectives use it)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **options)
    except (RuntimeError, ValueError) as exc:
        raise CacxrError(
            f"cannot join the process group (rank {env.rank} of {env.world_size}, {backend} at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {exc}"
        ) from None
    package_logger = logging.getLogger("cacxr")
    level = package_logger.level
    if env.rank != 0:
        package_logger.setLevel(logging.WARNING)
    try:
        context = current()
        logger.info("distributed training: %d processes (%s)", context.world_size, backend)
        yield context
    finally:
        package_logger.setLevel(level)
        dist.destroy_process_group()
