"""Which rows of an epoch each reader of a ``stream_dataset`` gets, under DDP and DataLoader workers.

A *consumer* is one (rank, DataLoader worker) pair. All consumers of a job compute the same epoch
order, a function of ``(seed, epoch)`` only: the dataset's blocks (chunks) in a seeded random
order, concatenated into one sequence of row positions. Rank ``r`` of ``world_size`` takes the
contiguous slice ``[r * per_rank, (r + 1) * per_rank)`` of that sequence, so every rank has the
same number of rows (and so of batches: DDP needs every rank to run the same number of steps or
its all-reduce waits forever), and reads whole chunks but for the two at its slice's ends:

* ``drop_last=False``: ``per_rank = ceil(rows / world_size)``; the short ranks are padded with
  rows from the start of the epoch's order (as torch's ``DistributedSampler`` does), so fewer than
  ``world_size`` rows come twice in an epoch; none when ``rows`` divides by ``world_size``.
* ``drop_last=True``: ``per_rank = rows // world_size`` and each rank's short final batch is
  dropped too: every rank yields ``rows // (world_size * batch_size)`` batches per epoch, and no
  row comes twice.

Within a rank, its batches are split into contiguous runs, one per DataLoader worker, so only the
rank's last batch can be short and the rank's batch count does not depend on its worker count.

The rank and world size are read once, when the stream is made (a DataLoader worker has no process
group): explicit ``rank=``/``world_size=``, else an initialised ``torch.distributed`` process
group, else the ``RANK``/``WORLD_SIZE`` environment variables (set by ``torchrun``), else
``(0, 1)``. A shuffled stream of several ranks needs one seed for all: with ``seed=None`` it is
rank 0's random seed, broadcast over the process group when the rank came from one; otherwise
(``rank=``/``world_size=`` or the environment) ``seed=`` must be given.
"""

from __future__ import annotations

import bisect
import math
import numbers
import os
import sys
from typing import Any

import numpy as np

from tensorhub.errors import ConfigurationError, InvalidArgumentError, InvalidArgumentTypeError


def _is_int(value: Any) -> bool:
    """An int, numpy's included (``np.int64(256)``), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _process_group() -> Any:
    """``torch.distributed`` when torch is imported and its default process group is initialised."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def _from_environment() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` from the environment (``torchrun`` sets both), else ``(0, 1)``."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and world is None:
        return 0, 1
    try:
        parsed = int(rank if rank is not None else ""), int(world if world is not None else "")
    except ValueError:
        raise ConfigurationError(
            f"the environment has RANK={rank!r} and WORLD_SIZE={world!r}: set both to ints (as torchrun does), "
            "unset both, or pass rank= and world_size= to stream_dataset") from None
    if not 0 <= parsed[0] < parsed[1]:
        raise ConfigurationError(f"the environment has RANK={rank} and WORLD_SIZE={world}: "
                                 "need 0 <= RANK < WORLD_SIZE")
    return parsed


def resolve_ranks(rank: Any = None, world_size: Any = None) -> tuple[int, int, bool]:
    """``(rank, world_size, from_process_group)`` of this process (see the module docstring)."""
    if rank is None and world_size is None:
        dist = _process_group()
        if dist is not None:
            return int(dist.get_rank()), int(dist.get_world_size()), True
        return (*_from_environment(), False)
    if rank is None or world_size is None:
        raise InvalidArgumentError(f"pass rank= and world_size= together (got rank={rank!r}, "
                                   f"world_size={world_size!r}), or neither to read them from torch.distributed")
    for name, value in (("rank", rank), ("world_size", world_size)):
        if not _is_int(value):
            raise InvalidArgumentTypeError(f"{name} must be an int, got {value!r}")
    if not 0 <= rank < world_size:
        raise InvalidArgumentError(f"need 0 <= rank < world_size, got rank={rank} and world_size={world_size}")
    return int(rank), int(world_size), False


def agree_seed(seed: int | None, world_size: int, from_process_group: bool) -> int:
    """The shuffle seed every rank uses: ``seed``, else one random seed that all ranks share."""
    if seed is not None:
        return seed
    if world_size == 1:
        return int(np.random.default_rng().integers(2**63))
    if not from_process_group:
        raise InvalidArgumentError(
            f"a shuffled stream over {world_size} ranks needs the same seed on every rank: pass seed= "
            "(or initialise torch.distributed first, and rank 0's random seed is shared)")
    dist = _process_group()
    box: list[Any] = [int(np.random.default_rng().integers(2**63)) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)  # a collective: every rank makes its stream, as every rank trains
    return int(box[0])


def rows_per_rank(rows: int, world_size: int, drop_last: bool) -> int:
    """How many rows of an epoch each rank reads (padded up, or cut down with ``drop_last``)."""
    return rows // world_size if drop_last else math.ceil(rows / world_size)


def batches_per_rank(rows: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """How many batches each rank yields per epoch: the same on every rank, whatever its workers."""
    per_rank = rows_per_rank(rows, world_size, drop_last)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def consumer_range(rows: int, rank: int, world_size: int, worker: int, workers: int, batch_size: int,
                   drop_last: bool) -> tuple[int, int]:
    """The positions ``[start, stop)`` of the epoch's order that one (rank, worker) reads.

    Positions past ``rows`` wrap to the start of the order (the padding of ``drop_last=False``).
    A worker gets a contiguous run of its rank's batches, so only the rank's last batch is short.
    """
    per_rank = rows_per_rank(rows, world_size, drop_last)
    batches = math.ceil(per_rank / batch_size)  # the short one too: drop_last drops it when it comes
    first, last = worker * batches // workers, (worker + 1) * batches // workers
    base = rank * per_rank
    return base + min(first * batch_size, per_rank), base + min(last * batch_size, per_rank)


def segments(blocks: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int]]:
    """Stored row ranges, in order, for positions ``[start, stop)`` of the sequence of ``blocks``.

    Each range lies inside one block (so reading it touches one chunk of the widest array);
    positions past the total wrap around.
    """
    total = sum(b - a for a, b in blocks)
    if total == 0 or stop <= start:
        return []
    offsets = np.cumsum([0] + [b - a for a, b in blocks]).tolist()
    out, pos = [], start
    while pos < stop:  # one step per block touched: bounded by the range's length
        p = pos % total
        i = bisect.bisect_right(offsets, p) - 1
        a, b = blocks[i]
        begin = a + p - offsets[i]
        n = min(b - begin, stop - pos)
        out.append((begin, begin + n))
        pos += n
    return out
