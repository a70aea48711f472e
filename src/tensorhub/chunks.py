"""Content-addressed, compressed chunks of arrays: the storage engine of datasets and parameters.

An array is cut along its first axis into chunks of about ``chunk_bytes`` (default 8 MiB),
stored under ``chunks/<BLAKE3 of the stored bytes>``. A chunk whose sample compresses well is
stored as a Blosc frame (LZ4 with byte shuffle); one that would not shrink (random floats,
trained weights) is stored as its raw bytes, written from the array and read straight into the
destination array without intermediate copies. A reader tells the two apart by size: raw
chunks are exactly the array bytes the manifest implies, and the writer never stores a Blosc
frame of that size. So:

* the same bytes are stored once, whoever saves them (datasets saved twice, checkpoints whose
  tensors did not change); records list the chunks they use in ``blob_refs`` and a delete frees
  only chunks no remaining record refers to (:meth:`tensorhub.records.Records.delete`);
* a read fetches only the chunks a slice needs (:class:`ChunkedArray`), verifies each against
  its hash (a damaged blob is an error, never a wrong array), and keeps recent chunks in an
  LRU cache;
* chunks are independent, so they are compressed, hashed, written and read by a small thread
  pool (Blosc, BLAKE3 and file/socket I/O release the GIL).

The per-array *manifest* (dtype, shape, rows per chunk, chunk hashes) lives in the record.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from blake3 import blake3
from numcodecs import Blosc

from tensorhub.backends.base import BlobStore
from tensorhub.errors import CorruptDataError, InvalidArgumentError, InvalidArgumentTypeError, NotFoundError
from tensorhub.progress import progress_bar

CHUNK_PREFIX = "chunks/"
DEFAULT_CHUNK_BYTES = 8 << 20
IO_THREADS = 4
_COMPRESSED = Blosc(cname="lz4", clevel=1, shuffle=Blosc.SHUFFLE)
_SAMPLE_BYTES = 64 << 10
_WORTH_IT = 0.85  # compress when the sample shrinks below this fraction


def digest(data: Any) -> str:
    """The content address of stored bytes: BLAKE3 (cryptographic, ~3x faster than SHA-256 here)."""
    return blake3(data).hexdigest()


def chunk_key(digest: str) -> str:
    return CHUNK_PREFIX + digest


def rows_per_chunk(shape: Sequence[int], itemsize: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many first-axis rows make a chunk of about ``chunk_bytes`` (at least one)."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * itemsize if len(shape) > 1 else itemsize
    return max(1, chunk_bytes // max(1, row_bytes))


def dtype_descr(dtype: np.dtype) -> str | None:
    """A structured dtype's fields as JSON text (numpy's ``descr``), which ``dtype.str`` loses; else None."""
    if dtype.fields is None:
        return None
    return json.dumps(np.lib.format.dtype_to_descr(dtype))


def dtype_from(dtype: str, descr: str | None = None) -> np.dtype:
    """The numpy dtype stored as ``dtype.str`` and, for structured dtypes, :func:`dtype_descr`."""
    if descr is None:
        return np.dtype(dtype)
    return np.lib.format.descr_to_dtype(_tuples(json.loads(descr)))


def _tuples(descr: Any) -> Any:
    """JSON turned the descr's tuples into lists; numpy wants them back as tuples."""
    if isinstance(descr, list) and descr and isinstance(descr[0], list):
        return [tuple(_tuples(part) for part in field) for field in descr]
    return descr


@dataclass
class Manifest:
    """Where an array's bytes are: dtype, shape, rows per chunk and the chunk digests in order.

    ``dtype`` is numpy's ``dtype.str`` (``"<f4"``); a structured dtype also keeps its fields in
    ``descr`` (see :func:`dtype_descr`), since its ``dtype.str`` is only ``"|V<size>"``.
    """

    dtype: str
    shape: list[int]
    chunk_rows: int
    chunks: list[str]
    descr: str | None = None

    @classmethod
    def of(cls, array: np.ndarray, chunk_rows: int, chunks: list[str]) -> Manifest:
        """The manifest of ``array`` stored as ``chunks`` of ``chunk_rows`` rows."""
        return cls(array.dtype.str, list(array.shape), chunk_rows, chunks, dtype_descr(array.dtype))

    @property
    def numpy_dtype(self) -> np.dtype:
        return dtype_from(self.dtype, self.descr)

    def to_doc(self) -> dict[str, Any]:
        doc = {"dtype": self.dtype, "shape": list(self.shape), "chunk_rows": self.chunk_rows,
               "chunks": list(self.chunks)}
        if self.descr is not None:
            doc["descr"] = self.descr
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Manifest:
        return cls(doc["dtype"], list(doc["shape"]), int(doc["chunk_rows"]), list(doc["chunks"]),
                   doc.get("descr"))

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def checksum(self) -> str:
        """One digest for the whole array (dtype, shape and every chunk)."""
        text = f"{self.dtype}|{self.shape}|{self.chunk_rows}|{','.join(self.chunks)}"
        if self.descr is not None:
            text += f"|{self.descr}"
        return digest(text.encode())


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array of any dtype, without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8)) if array.nbytes else memoryview(b"")  # type: ignore[arg-type]


def encode(block: np.ndarray) -> tuple[str, Any]:
    """``(digest, stored bytes)`` of a block: a Blosc frame if a sample compresses, else the raw bytes."""
    block = np.ascontiguousarray(block)
    raw = _bytes_of(block)
    sample = raw[:_SAMPLE_BYTES]
    if len(sample) and len(_COMPRESSED.encode(sample)) < _WORTH_IT * len(sample):
        frame = _COMPRESSED.encode(block)
        if len(frame) != len(raw):  # a frame never has the raw size: that is how readers tell them apart
            return digest(frame), frame
    return digest(raw), raw


class ChunkWriter:
    """Writes arrays as deduplicated chunks; collects the digests it used in ``refs``."""

    def __init__(self, blobs: BlobStore, chunk_bytes: int = DEFAULT_CHUNK_BYTES, desc: str = "saving") -> None:
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            wrong_type = isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int)
            raise (InvalidArgumentTypeError if wrong_type else InvalidArgumentError)(
                f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
        self.blobs = blobs
        self.chunk_bytes = chunk_bytes
        self.refs: list[str] = []
        self.desc = desc

    def _store(self, block: np.ndarray) -> str:
        name, data = encode(block)
        key = chunk_key(name)
        if not self.blobs.freshen(key):  # content-addressed: same bytes, same key, stored once (a reused
            # chunk is freshened so that a garbage collection running meanwhile keeps it)
            self.blobs.put(key, data)
        return name

    def write_blocks(self, blocks: Iterable[np.ndarray], total: int | None = None) -> list[str]:
        """Store blocks in parallel (order kept); return their digests."""
        with ThreadPoolExecutor(IO_THREADS) as pool, progress_bar(total=total, desc=self.desc, unit="chunk") as bar:
            digests = []
            pending: list[Any] = []
            for block in blocks:
                pending.append(pool.submit(self._store, block))
                if len(pending) >= 2 * IO_THREADS:  # bound memory: at most a few chunks in flight
                    digests.append(pending.pop(0).result())
                    bar.update()
            for future in pending:
                digests.append(future.result())
                bar.update()
        self.refs.extend(d for d in digests if d not in self.refs)
        return digests

    def write(self, array: np.ndarray) -> Manifest:
        """Store ``array`` (C order, chunked along axis 0) and return its manifest."""
        array = np.asarray(array)
        if array.ndim == 0:
            return Manifest.of(array, 1, self.write_blocks([array.reshape(1)], 1))
        step = rows_per_chunk(array.shape, array.dtype.itemsize, self.chunk_bytes)
        starts = range(0, array.shape[0], step)
        digests = self.write_blocks((array[i:i + step] for i in starts), len(starts))
        return Manifest.of(array, step, digests)


class ChunkCache:
    """A small thread-safe LRU of decoded chunks, bounded in bytes."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, digest: str) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(digest)
            if value is not None:
                self._items.move_to_end(digest)
            return value

    def put(self, digest: str, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            if digest in self._items:
                return
            self._items[digest] = value
            self._size += value.nbytes
            while self._size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._size -= old.nbytes


def read_chunk_into(blobs: BlobStore, name: str, target: np.ndarray) -> None:
    """Fetch chunk ``name``, verify it against its digest and decode it straight into ``target``.

    The blob is read into ``target``'s bytes: a raw chunk is then only verified (one copy from
    the store, none after); a Blosc frame (smaller) is verified and decoded into place. On a
    mismatch ``target`` holds garbage and :class:`CorruptDataError` says so.
    """
    try:
        stream = blobs.open(chunk_key(name))
    except NotFoundError as exc:
        raise NotFoundError(f"chunk {name[:12]}... is missing; the record outlived its bytes: delete the "
                            "record and save the data again") from exc
    view = _bytes_of(target)
    with stream:
        filled = _readinto(stream, view)
        extra = stream.read()
    if filled == len(view) and not extra:
        if digest(view) != name:
            raise CorruptDataError(f"chunk {name[:12]}... is altered (its bytes do not match its digest); "
                                   "save the data again from a good copy")
        return
    data = bytes(view[:filled]) + extra
    if digest(data) != name:
        raise CorruptDataError(f"chunk {name[:12]}... is truncated or altered (its bytes do not match its "
                               "digest); save the data again from a good copy")
    if len(data) < 16 or int.from_bytes(data[4:8], "little") != len(view):
        raise CorruptDataError(f"chunk {name[:12]}... does not hold the {len(view)} bytes its record expects; "
                               "the record is damaged: save the data again")
    try:
        _COMPRESSED.decode(data, out=view)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means damaged bytes
        raise CorruptDataError(f"chunk {name[:12]}... cannot be decompressed: {exc}") from exc


def _readinto(stream: Any, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` (fewer bytes only at its end); return how many were read."""
    filled = 0
    readinto = getattr(stream, "readinto", None)
    while filled < len(view):
        if readinto is not None:
            n = readinto(view[filled:])
        else:
            more = stream.read(len(view) - filled)
            n = len(more)
            view[filled:filled + n] = more
        if not n:
            break
        filled += n
    return filled


def _chunk_shape(manifest: Manifest, index: int) -> tuple[int, ...]:
    if not manifest.shape:
        return ()
    start = index * manifest.chunk_rows
    return (min(manifest.chunk_rows, manifest.shape[0] - start), *manifest.shape[1:])


def read_chunk(blobs: BlobStore, manifest: Manifest, index: int, cache: ChunkCache | None = None) -> np.ndarray:
    """Chunk ``index`` of an array, decoded and shaped, verified against its digest."""
    name = manifest.chunks[index]
    if cache is not None:
        hit = cache.get(name)
        if hit is not None:
            return hit
    value = np.empty(_chunk_shape(manifest, index), dtype=manifest.numpy_dtype)
    read_chunk_into(blobs, name, value)
    if cache is not None:
        cache.put(name, value)
    return value


def read_rows(blobs: BlobStore, manifest: Manifest, start: int, stop: int,
              cache: ChunkCache | None = None, parallel: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start:stop`` of an array (clipped), reading only the chunks that hold them.

    Whole chunks are read straight into ``out`` (allocated when not given) and bypass the
    cache, which only serves chunks read in part (a slice's ends, narrow arrays of a stream).
    """
    dtype = manifest.numpy_dtype
    if not manifest.shape:
        return read_chunk(blobs, manifest, 0, cache)
    n = manifest.shape[0]
    start, stop = max(0, min(start, n)), max(0, min(stop, n))
    if out is None:
        out = np.empty((max(0, stop - start), *manifest.shape[1:]), dtype=dtype)
    if stop <= start:
        return out
    step = manifest.chunk_rows
    indices = range(start // step, (stop - 1) // step + 1)

    def fill(i: int) -> None:
        lo, hi = max(start, i * step), min(stop, (i + 1) * step)
        if lo == i * step and hi == min(n, (i + 1) * step):
            read_chunk_into(blobs, manifest.chunks[i], out[lo - start:hi - start])  # a whole chunk: no copy
            return
        chunk = read_chunk(blobs, manifest, i, cache)
        out[lo - start:hi - start] = chunk[lo - i * step:hi - i * step]

    if parallel and len(indices) > 1:
        with ThreadPoolExecutor(IO_THREADS) as pool:
            for _ in pool.map(fill, indices):
                pass
    else:
        for i in indices:
            fill(i)
    return out


def read_all(blobs: BlobStore, manifest: Manifest, desc: str = "loading") -> np.ndarray:
    """The whole array, chunks fetched in parallel (with a progress bar when interactive)."""
    if not manifest.shape:
        return read_chunk(blobs, manifest, 0)
    with progress_bar(total=len(manifest.chunks), desc=desc, unit="chunk") as bar:
        out = np.empty(manifest.shape, dtype=manifest.numpy_dtype)
        step = manifest.chunk_rows

        def fill(i: int) -> None:
            read_chunk_into(blobs, manifest.chunks[i], out[i * step:(i + 1) * step])
            bar.update()

        with ThreadPoolExecutor(IO_THREADS) as pool:
            for _ in pool.map(fill, range(len(manifest.chunks))):
                pass
    return out


class ChunkedArray:
    """An array-like over a stored array that reads only the chunks a selection needs.

    ``a[10:20]``, ``a[5]``, ``a[[1, 7, 3]]``, ``a[2:9, :, 0]`` fetch just the chunks holding
    those rows; ``np.asarray(a)`` loads everything. Recent chunks are cached.
    """

    def __init__(self, blobs: BlobStore, manifest: Manifest, cache: ChunkCache | None = None) -> None:
        self._blobs = blobs
        self.manifest = manifest
        self.shape = tuple(manifest.shape)
        self.dtype = manifest.numpy_dtype
        self._cache = cache or ChunkCache()

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape, dtype=np.int64)))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ChunkedArray(shape={self.shape}, dtype={self.dtype}, chunks={len(self.manifest.chunks)})"

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an in-memory array."""
        return read_rows(self._blobs, self.manifest, start, stop, self._cache)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = read_all(self._blobs, self.manifest)
        return array if dtype is None else array.astype(dtype)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, key: Any) -> Any:
        if not self.shape:
            return np.asarray(self)[key]
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        n = self.shape[0]
        keeps_axis = True
        if first is Ellipsis:
            return np.asarray(self)[key]
        if isinstance(first, (int, np.integer)):
            keeps_axis = False
            index = int(first) + n if first < 0 else int(first)
            if not 0 <= index < n:
                raise IndexError(f"index {first} is out of bounds for axis 0 with size {n}")
            rows = self.read_rows(index, index + 1)[0]
        elif isinstance(first, slice):
            start, stop, step = first.indices(n)
            if step > 0:
                rows = self.read_rows(start, stop)[::step]
            else:
                rows = self.read_rows(stop + 1, start + 1)[::-1][::-step]
        else:
            indices = np.asarray(first)
            if indices.dtype == bool:
                indices = np.flatnonzero(indices)
            if indices.dtype.kind not in "iu":
                raise InvalidArgumentTypeError(f"cannot index a ChunkedArray with {first!r}")
            indices = np.where(indices < 0, indices + n, indices)
            if indices.size and (indices.min() < 0 or indices.max() >= n):
                raise IndexError(f"an index is out of bounds for axis 0 with size {n}")
            rows = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
            step = self.manifest.chunk_rows
            for chunk_index in np.unique(indices // step):  # only the chunks the indices fall in
                chunk = read_chunk(self._blobs, self.manifest, int(chunk_index), self._cache)
                hits = np.flatnonzero(indices // step == chunk_index)
                rows[hits] = chunk[indices[hits] - chunk_index * step]
        if not rest:
            return rows
        return rows[(slice(None), *rest)] if keeps_axis else rows[rest]
