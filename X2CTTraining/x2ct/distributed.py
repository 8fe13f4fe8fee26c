"""Data-parallel runs under ``torchrun``: the process group, this process's rank, sharding and gathering.

``torchrun --nproc_per_node N -m x2ct.cli COMMAND ...`` starts N copies of the command with the
environment variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
(PyTorch's *env://* rendezvous). :func:`session` reads them, joins the process group (NCCL for CUDA
devices, gloo for the CPU) and leaves it at the end. Without them, or with ``WORLD_SIZE=1``, nothing
is initialised and every helper here degrades to the single-process case, so the commands run the
same code either way. torch is imported on use only, so that the command line starts quickly.

Failures: a rank that raises leaves the group by exiting; torchrun then stops the other ranks. When
torchrun itself is killed, its ranks (in sessions of their own) end too (:mod:`x2ct.lifetime`). A
collective that fails because a peer is gone raises :class:`PeerFailure`, whose one-line message
says so instead of a backend trace. The group's timeout (:data:`TIMEOUT`) bounds any remaining wait.
docs/distributed.md has the launch commands.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence, TypeVar

from .lifetime import end_with_parent

if TYPE_CHECKING:
    import torch

    from .errors import PathLike

T = TypeVar("T")

TIMEOUT = datetime.timedelta(minutes=10)
"""Longest wait of a collective operation before the run stops with an error."""

ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_RANK = "RANK"
ENV_LOCAL_RANK = "LOCAL_RANK"


class PeerFailure(RuntimeError):
    """A collective operation failed because another rank stopped (its own error is printed by that rank)."""


@dataclass(frozen=True)
class Context:
    """Where this process stands in a data-parallel run: ``rank`` of ``world_size`` (``local_rank`` on its
    node); ``backend`` is None outside a process group (one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        """True inside a process group of two or more ranks."""
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that logs and writes."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """``device`` made specific to this rank: CUDA ranks use the GPU numbered by their local rank."""
        import torch

        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device


SINGLE = Context()
"""The context of a plain (not distributed) run."""


def requested_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset or not a number): the ranks torchrun started."""
    try:
        return max(1, int(os.environ.get(ENV_WORLD_SIZE, "1")))
    except ValueError:
        return 1


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Context]:
    """The run's :class:`Context`; under torchrun with two or more ranks, inside a process group whose
    backend suits ``device`` (NCCL for CUDA, gloo otherwise), left when the block ends."""
    import torch
    import torch.distributed as dist

    world_size = requested_world_size()
    if world_size == 1 or not dist.is_available():
        yield SINGLE
        return
    end_with_parent(kernel_signal=False)  # a rank whose torchrun was killed stops instead of writing on
    rank, local_rank = int(os.environ[ENV_RANK]), int(os.environ.get(ENV_LOCAL_RANK, "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    try:
        yield Context(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)
    finally:
        dist.destroy_process_group()


def first_line(err: BaseException) -> str:
    """The first line of an exception's text (at most 160 characters), or its type's name."""
    return ((str(err).strip().splitlines() or [type(err).__name__])[0])[:160]


_PEER_WORDS = ("closed by peer", "reset by peer", "broken pipe", "connection", "gloo", "nccl", "timed out", "timeout")


def is_peer_failure(err: BaseException) -> bool:
    """True for the errors a collective raises when another rank is gone (backend errors and socket failures)."""
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return any(word in text for word in _PEER_WORDS)


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a backend error of a collective into :class:`PeerFailure` (one line)."""
    import torch.distributed as dist

    try:
        yield
    except (RuntimeError, dist.DistError) as err:
        raise PeerFailure(f"{what} failed: another rank stopped or cannot be reached ({first_line(err)})") from None


def shard(items: Sequence[T], context: Context) -> List[T]:
    """This rank's share of ``items``: every ``world_size``-th item from position ``rank`` (all of them
    in a single-process run). Every rank must pass the same sequence."""
    return list(items[context.rank :: context.world_size])


def split_evenly(items: Sequence[T], context: Context) -> List[T]:
    """This rank's contiguous part of ``items`` when they are cut into ``world_size`` parts whose sizes
    differ by at most one (the first ``len % world_size`` parts are one longer), as
    :func:`numpy.array_split` cuts."""
    base, extra = divmod(len(items), context.world_size)
    start = context.rank * base + min(context.rank, extra)
    return list(items[start : start + base + (1 if context.rank < extra else 0)])


def gather(value: T, context: Context) -> List[T]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` in one process.
    The objects travel only between the processes of this run."""
    if not context.distributed:
        return [value]
    import torch.distributed as dist

    gathered: List[Any] = [None] * context.world_size
    with _collective("gathering results"):
        dist.all_gather_object(gathered, value)
    return gathered


def weighted_sum_(tensors: Sequence[torch.Tensor], weight: float, context: Context) -> None:
    """Replace each tensor, in place and on every rank, by the sum over ranks of ``weight`` times it (with
    weights that sum to 1, the weighted mean). Nothing happens in one process."""
    if not context.distributed or not tensors:
        return
    import torch.distributed as dist

    with _collective("averaging buffers"):
        for tensor in tensors:
            tensor.mul_(weight)
            dist.all_reduce(tensor)


def all_true(flag: bool, context: Context) -> bool:
    """True when ``flag`` is true on every rank."""
    return all(gather(bool(flag), context))


@contextlib.contextmanager
def main_rank_owns(out: PathLike, context: Context) -> Iterator[None]:
    """Rank 0 holds output ``out`` (:func:`x2ct.atomic.exclusive_output`: one writer at a time, leftovers of
    killed runs removed) while the block runs. When another x2ct run holds it, rank 0 raises its InputError
    and the other ranks :class:`PeerFailure`, before any rank writes."""
    from .atomic import exclusive_output
    from .errors import InputError

    with contextlib.ExitStack() as stack:
        refused: Optional[InputError] = None
        if context.is_main:
            try:
                stack.enter_context(exclusive_output(out))
            except InputError as err:
                refused = err
        if not all_true(refused is None, context):
            if refused is not None:
                raise refused
            raise PeerFailure(f"{out}: rank 0 found another x2ct run writing this output")
        yield


def barrier(context: Context) -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if context.distributed:
        import torch.distributed as dist

        with _collective("waiting for the other ranks"):
            dist.barrier()
