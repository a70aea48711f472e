"""``stream_dataset``: batches of a stored dataset in bounded memory, shuffled, prefetched.

The dataset's rows are cut into *blocks* that follow the chunk layout. Each epoch visits the
blocks in a seeded random order; ``buffer_chunks`` blocks at a time are read (by ``prefetch``
background threads, straight into one buffer per array) while the previous group is being
consumed, and each group's rows are permuted and cut into batches (a batch copies only its own
rows). Memory is bounded by two groups, ``2 * buffer_chunks`` blocks, whatever the dataset's
size: a block is one chunk of the widest array (8 MiB by default). Every row comes exactly once
per epoch, and the same ``seed`` gives the same batches.

A stream is picklable (it reopens the blob store from the hub's URI in another process), and
when torch is imported it is a ``torch.utils.data.IterableDataset``: under a ``DataLoader``
with several workers, each worker reads its own share of the blocks. Under ``torch.distributed``
(DDP) each rank reads its own share of every epoch, and every rank yields the same number of
batches: ``stream_shards.py`` says which rows each (rank, worker) reads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tensorhub.backends.base import BlobStore
from tensorhub.chunks import ChunkCache, Manifest, read_rows
from tensorhub.context import Connection
from tensorhub.datasets import require_rows
from tensorhub.errors import BackendUnavailableError, InvalidArgumentError, InvalidArgumentTypeError
from tensorhub.stream_shards import _is_int, agree_seed, batches_per_rank, consumer_range, resolve_ranks, segments
from tensorhub.structure import loads_spec, unflatten


def _row_bytes(manifest: Manifest) -> int:
    return int(np.prod(manifest.shape[1:], dtype=np.int64)) * manifest.numpy_dtype.itemsize


def _worker_share() -> tuple[int, int]:
    """``(worker id, number of workers)`` inside a torch DataLoader worker, else ``(0, 1)``."""
    torch_data = sys.modules.get("torch.utils.data")
    info = torch_data.get_worker_info() if torch_data is not None else None
    return (info.id, info.num_workers) if info is not None else (0, 1)


class DatasetStream:
    """An iterable of batches over one stored dataset (see the module docstring)."""

    def __init__(self, connection: Connection, record: dict, batch_size: int, shuffle: bool = True,
                 seed: int | None = None, epochs: int = 1, buffer_chunks: int = 2, prefetch: int = 2,
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None,
                 blobs: BlobStore | None = None) -> None:
        if not _is_int(batch_size) or batch_size < 1:
            raise (InvalidArgumentError if _is_int(batch_size) else InvalidArgumentTypeError)(
                f"batch_size must be a positive int, got {batch_size!r}")
        if not _is_int(epochs) or epochs < 1:
            raise (InvalidArgumentError if _is_int(epochs) else InvalidArgumentTypeError)(
                f"epochs must be a positive int, got {epochs!r}")
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise (InvalidArgumentError if _is_int(seed) else InvalidArgumentTypeError)(
                f"seed must be None or an int >= 0, got {seed!r}")
        batch_size, epochs = int(batch_size), int(epochs)
        seed = None if seed is None else int(seed)
        if record.get("pickled"):
            raise InvalidArgumentError("datasets with pickled leaves cannot be streamed")
        self.rows = require_rows(record)
        self.connection, self.record = connection, record
        self.batch_size, self.shuffle, self.epochs = batch_size, shuffle, epochs
        self.buffer_chunks, self.prefetch, self.drop_last = max(1, buffer_chunks), max(1, prefetch), drop_last
        # read here, in the rank's own process: a DataLoader worker has no process group
        self.rank, self.world_size, from_group = resolve_ranks(rank, world_size)
        if seed is None and not shuffle:
            seed = 0  # unused: nothing to agree on, and no collective to wait for
        self.seed = agree_seed(seed, self.world_size, from_group)  # shared by workers (pickled) and ranks
        self.spec = loads_spec(record["spec"])
        self.manifests = [Manifest.from_doc(s) for s in record["schema"]]
        # a block is the rows of one chunk of the widest array; narrower arrays' chunks span
        # several blocks and stay in a small cache meanwhile
        self.block_rows = min([m.chunk_rows for m in self.manifests if m.shape] or [1])
        self.cache_bytes = 2 * sum(m.chunk_rows * _row_bytes(m) for m in self.manifests)
        self._blobs = blobs
        self._blobs_pid = os.getpid()  # a forked DataLoader worker reopens: it must not share the parent's sockets
        self._iterator: Iterator[Any] | None = None  # what next() reads; iter() starts afresh

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_blobs"] = None  # connections do not cross processes: reopened from the URI
        state["_iterator"] = None  # a generator does not either
        return state

    def __next__(self) -> Any:
        """The next batch, so that the stream is an iterator (``next(stream)``) as API.md says.

        ``for batch in stream`` (and a ``DataLoader``) calls ``iter()``, which starts a pass of
        its own; ``next()`` continues one pass kept here.
        """
        if self._iterator is None:
            self._iterator = iter(self)
        return next(self._iterator)

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None or self._blobs_pid != os.getpid():
            from tensorhub.registry import open_stores

            uri = self.connection.blobs or self.connection.uri
            blobs = open_stores(uri, index=False, blobs=True).blobs
            if blobs is None:  # a backend's open_stores returns what was asked for
                raise BackendUnavailableError(f"could not open the blob store of {self.connection}")
            self._blobs, self._blobs_pid = blobs, os.getpid()
        return self._blobs

    def __len__(self) -> int:
        """Batches this rank yields over all epochs (the same on every rank; see ``stream_shards``)."""
        return batches_per_rank(self.rows, self.world_size, self.batch_size, self.drop_last) * self.epochs

    def _blocks(self, epoch: int) -> list[tuple[int, int]]:
        """The row ranges this (rank, worker) reads in ``epoch``: its slice of the epoch's block order."""
        blocks = [(s, min(s + self.block_rows, self.rows)) for s in range(0, self.rows, self.block_rows)]
        if self.shuffle:  # a function of (seed, epoch) only: every rank and worker computes the same
            order = np.random.default_rng([self.seed, epoch]).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        worker, workers = _worker_share()
        start, stop = consumer_range(self.rows, self.rank, self.world_size, worker, workers, self.batch_size,
                                     self.drop_last)
        return segments(blocks, start, stop)

    def _batch(self, arrays: list[np.ndarray]) -> Any:
        return unflatten(self.spec, lambda i, node: arrays[i], lambda i: b"")

    def _fill(self, group: list[tuple[int, int]], pool: ThreadPoolExecutor, cache: ChunkCache) -> tuple[list, list]:
        """Start reading a group of blocks straight into one new buffer per array; return both."""
        rows = sum(stop - start for start, stop in group)
        buffers = [np.empty((rows, *m.shape[1:]), dtype=m.numpy_dtype) for m in self.manifests]
        futures, offset = [], 0
        for start, stop in group:
            for manifest, buffer in zip(self.manifests, buffers):
                target = buffer[offset:offset + stop - start]
                futures.append(pool.submit(read_rows, self.blobs, manifest, start, stop, cache, False, target))
            offset += stop - start
        return buffers, futures

    def _epoch(self, epoch: int, pool: ThreadPoolExecutor, cache: ChunkCache) -> Iterator[Any]:
        """One epoch: double-buffered groups of blocks, each permuted and cut into batches."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        blocks = self._blocks(epoch)
        groups = [blocks[i:i + self.buffer_chunks] for i in range(0, len(blocks), self.buffer_chunks)]
        pending = self._fill(groups[0], pool, cache) if groups else None
        carry: list[np.ndarray] | None = None
        bs = self.batch_size
        for g in range(len(groups)):
            if pending is None:  # only when there is no group, and then no iteration
                break
            buffers, futures = pending
            for future in futures:
                future.result()
            pending = self._fill(groups[g + 1], pool, cache) if g + 1 < len(groups) else None  # prefetch
            n = len(buffers[0])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            pos = 0
            if carry is not None and len(carry[0]):
                take = order[:bs - len(carry[0])]
                pos = len(take)
                carry = [np.concatenate([c, b[take]]) for c, b in zip(carry, buffers)]
                if len(carry[0]) == bs:
                    yield self._batch(carry)
                    carry = None
            while carry is None and pos + bs <= n:
                yield self._batch([b[order[pos:pos + bs]] for b in buffers])
                pos += bs
            if carry is None and pos < n:
                carry = [b[order[pos:]] for b in buffers]  # fewer than a batch: into the next group
            del buffers
        if carry is not None and len(carry[0]) and not self.drop_last:
            yield self._batch(carry)

    def __iter__(self) -> Iterator[Any]:
        cache = ChunkCache(max_bytes=self.cache_bytes)
        with ThreadPoolExecutor(self.prefetch) as pool:
            for epoch in range(self.epochs):
                yield from self._epoch(epoch, pool, cache)


_torch_stream_class: type | None = None


def _torch_stream() -> type:
    """``DatasetStream`` that is also a ``torch.utils.data.IterableDataset`` (built on first use)."""
    global _torch_stream_class
    if _torch_stream_class is None:
        from torch.utils.data import IterableDataset

        _torch_stream_class = type("TorchDatasetStream", (DatasetStream, IterableDataset),
                                   {"__module__": __name__, "__doc__": DatasetStream.__doc__})
    return _torch_stream_class


def __getattr__(name: str) -> Any:
    if name == "TorchDatasetStream":  # lets pickle find the class in DataLoader worker processes
        return _torch_stream()
    raise AttributeError(name)


def make_stream(connection: Connection, record: dict, batch_size: int, **options: Any) -> DatasetStream:
    """A :class:`DatasetStream`, a torch ``IterableDataset`` too when torch is already imported."""
    cls = _torch_stream() if "torch" in sys.modules else DatasetStream
    return cls(connection, record, batch_size, **options)
