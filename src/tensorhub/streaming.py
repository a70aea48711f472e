"""``stream_dataset``: batches of a stored dataset in bounded memory, shuffled, prefetched.

The dataset's rows are cut into *blocks* that follow the chunk layout. Each epoch visits the
blocks in a seeded random order; a few blocks at a time fill a shuffle buffer whose rows are
permuted again and cut into batches. Background threads prefetch the next blocks. Memory is
bounded by ``(buffer_chunks + prefetch)`` blocks, whatever the dataset's size; every row comes
exactly once per epoch, and the same ``seed`` gives the same batches. A block is one chunk of the
widest array, so the bound is a few chunks (8 MiB each by default).

A stream is picklable (it reopens the blob store from the hub's URI in another process), and
when torch is imported it is a ``torch.utils.data.IterableDataset``: under a ``DataLoader``
with several workers, each worker reads its own share of the blocks.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tensorhub.backends.base import BlobStore
from tensorhub.chunks import ChunkCache, Manifest, read_rows
from tensorhub.context import Connection
from tensorhub.datasets import require_rows
from tensorhub.errors import InvalidArgumentError
from tensorhub.structure import loads_spec, unflatten


def _row_bytes(manifest: Manifest) -> int:
    return int(np.prod(manifest.shape[1:], dtype=np.int64)) * np.dtype(manifest.dtype).itemsize


def _worker_share() -> tuple[int, int]:
    """``(worker id, number of workers)`` inside a torch DataLoader worker, else ``(0, 1)``."""
    torch_data = sys.modules.get("torch.utils.data")
    info = torch_data.get_worker_info() if torch_data is not None else None
    return (info.id, info.num_workers) if info is not None else (0, 1)


class DatasetStream:
    """An iterable of batches over one stored dataset (see the module docstring)."""

    def __init__(self, connection: Connection, record: dict, batch_size: int, shuffle: bool = True,
                 seed: int | None = None, epochs: int = 1, buffer_chunks: int = 4, prefetch: int = 2,
                 drop_last: bool = False, blobs: BlobStore | None = None) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(epochs, int) or epochs < 1:
            raise InvalidArgumentError(f"epochs must be a positive int, got {epochs!r}")
        if record.get("pickled"):
            raise InvalidArgumentError("datasets with pickled leaves cannot be streamed")
        self.rows = require_rows(record)
        self.connection, self.record = connection, record
        self.batch_size, self.shuffle, self.epochs = batch_size, shuffle, epochs
        self.buffer_chunks, self.prefetch, self.drop_last = max(1, buffer_chunks), max(1, prefetch), drop_last
        self.seed = int(np.random.default_rng().integers(2**63)) if seed is None else seed  # shared by workers
        self.spec = loads_spec(record["spec"])
        self.manifests = [Manifest.from_doc(s) for s in record["schema"]]
        # a block is the rows of one chunk of the widest array; narrower arrays' chunks span
        # several blocks and stay in a small cache meanwhile
        self.block_rows = min([m.chunk_rows for m in self.manifests if m.shape] or [1])
        self.cache_bytes = 2 * sum(m.chunk_rows * _row_bytes(m) for m in self.manifests)
        self._blobs = blobs

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_blobs"] = None  # connections do not cross processes: reopened from the URI
        return state

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            from tensorhub.registry import open_stores

            uri = self.connection.blobs or self.connection.uri
            self._blobs = open_stores(uri, index=False, blobs=True).blobs
        return self._blobs

    def __len__(self) -> int:
        per_epoch = self.rows // self.batch_size if self.drop_last else math.ceil(self.rows / self.batch_size)
        return per_epoch * self.epochs

    def _blocks(self, epoch: int) -> list[tuple[int, int]]:
        blocks = [(s, min(s + self.block_rows, self.rows)) for s in range(0, self.rows, self.block_rows)]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        worker, workers = _worker_share()
        return blocks[worker::workers]

    def _read_block(self, block: tuple[int, int], cache: ChunkCache) -> list[np.ndarray]:
        return [read_rows(self.blobs, m, *block, cache=cache, parallel=False) for m in self.manifests]

    def _batch(self, arrays: list[np.ndarray]) -> Any:
        return unflatten(self.spec, lambda i, node: arrays[i], lambda i: b"")

    def _epoch(self, epoch: int, pool: ThreadPoolExecutor, cache: ChunkCache) -> Iterator[Any]:
        rng = np.random.default_rng([self.seed, epoch, 1])
        blocks = deque(self._blocks(epoch))
        in_flight: deque = deque()
        carry: list[np.ndarray] | None = None
        while blocks or in_flight:
            while blocks and len(in_flight) < self.prefetch + self.buffer_chunks:
                in_flight.append(pool.submit(self._read_block, blocks.popleft(), cache))
            parts = [in_flight.popleft().result() for _ in range(min(self.buffer_chunks, len(in_flight)))]
            if carry is not None:
                parts.insert(0, carry)
            buffer = [np.concatenate([p[i] for p in parts]) for i in range(len(self.manifests))]
            if self.shuffle:
                perm = rng.permutation(len(buffer[0]))
                buffer = [a[perm] for a in buffer]
            full = len(buffer[0]) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                yield self._batch([a[start:start + self.batch_size] for a in buffer])
            carry = [a[full:] for a in buffer]
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
