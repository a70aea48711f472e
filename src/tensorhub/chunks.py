"""Content-addressed, compressed chunks of arrays: the storage engine of datasets and parameters.

An array is cut along its first axis into chunks of about ``chunk_bytes`` (default 8 MiB),
stored under ``chunks/<BLAKE3 of the stored bytes>``. Every chunk is a Blosc frame, so zarr's
``blosc`` codec decodes it (:mod:`tensorhub.zarr_view`): LZ4 with byte shuffle when a sample of
the chunk compresses well; a frame without compression (``clevel=0``: a 16-byte header, then the
raw bytes) when it would not shrink (random floats, trained weights). Such a frame is still read
straight into the destination array after its header, without intermediate copies. When an
array has more than one chunk, its last chunk is padded with zeros to the full ``chunk_rows``
(zarr's regular chunk grid); the manifest keeps the true shape. This is chunk format
:data:`CHUNK_FORMAT` (2), recorded in each manifest as ``chunk_format``. Manifests without it are
format 1 (before issue 15): a chunk that would not shrink is its raw bytes (a reader tells them
from frames by size) and the last chunk is not padded; both formats are read, appends keep an
array's format, and :func:`tensorhub.datasets.upgrade_datasets` (``tensorhub upgrade``) rewrites
format-1 datasets. So:

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
_STORED = Blosc(cname="lz4", clevel=0, shuffle=Blosc.NOSHUFFLE)  # a frame of the raw bytes (a memcpy)
_HEADER = 16  # a Blosc frame's header: version, flags, typesize, nbytes, blocksize, cbytes
_MEMCPYED = 0x02  # the header flag of a frame whose data is the raw bytes, right after the header
#: the chunk format this version writes: every chunk a Blosc frame, the last one padded (see above)
CHUNK_FORMAT = 2


def digest(data: Any) -> str:
    """The content address of stored bytes: BLAKE3 (cryptographic, ~3x faster than SHA-256 here)."""
    return blake3(data).hexdigest()


def chunk_key(digest: str) -> str:
    return CHUNK_PREFIX + digest


def row_bytes(shape: Sequence[int], itemsize: int) -> int:
    """The bytes of one first-axis row (of the one element of a 0-d array)."""
    return int(np.prod(shape[1:], dtype=np.int64)) * itemsize if len(shape) > 1 else itemsize


def rows_per_chunk(shape: Sequence[int], itemsize: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many first-axis rows make a chunk of about ``chunk_bytes`` (at least one)."""
    return max(1, chunk_bytes // max(1, row_bytes(shape, itemsize)))


def blocks_of(array: np.ndarray, step: int, chunk_format: int = CHUNK_FORMAT,
              chunks_before: int = 0) -> Iterator[tuple[np.ndarray, bool]]:
    """``(block, padded)``: ``array`` cut into blocks of ``step`` rows along axis 0, as chunk format
    ``chunk_format`` stores them after ``chunks_before`` chunks of the same array: in format 2 the
    last block is padded with zeros to ``step`` rows when the array has more than one chunk
    (padded only when its turn comes, so at most one padded copy is in memory)."""
    count = len(range(0, array.shape[0], step))
    pad = chunk_format >= 2 and chunks_before + count > 1 and array.shape[0] % step != 0
    for i in range(count):
        if pad and i == count - 1:
            yield pad_rows(array[i * step:], step), True
        else:
            yield array[i * step:(i + 1) * step], False


def pad_rows(block: np.ndarray, rows: int) -> np.ndarray:
    """``block`` followed by zero rows up to ``rows`` rows (zeros: they compress to almost nothing)."""
    padded = np.zeros((rows, *block.shape[1:]), dtype=block.dtype)
    padded[:len(block)] = block
    return padded


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
    chunk_format: int = 1

    @classmethod
    def of(cls, array: np.ndarray, chunk_rows: int, chunks: list[str], chunk_format: int = CHUNK_FORMAT) -> Manifest:
        """The manifest of ``array`` stored as ``chunks`` of ``chunk_rows`` rows."""
        return cls(array.dtype.str, list(array.shape), chunk_rows, chunks, dtype_descr(array.dtype), chunk_format)

    @property
    def numpy_dtype(self) -> np.dtype:
        return dtype_from(self.dtype, self.descr)

    def to_doc(self) -> dict[str, Any]:
        doc = {"dtype": self.dtype, "shape": list(self.shape), "chunk_rows": self.chunk_rows,
               "chunks": list(self.chunks)}
        if self.descr is not None:
            doc["descr"] = self.descr
        if self.chunk_format != 1:
            doc["chunk_format"] = self.chunk_format
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Manifest:
        chunk_format = doc.get("chunk_format", 1)
        if chunk_format not in (1, CHUNK_FORMAT):
            raise CorruptDataError(f"an array is stored in chunk format {chunk_format!r}, which this version of "
                                   f"tensorhub does not know (it reads 1 and {CHUNK_FORMAT}); upgrade tensorhub")
        return cls(doc["dtype"], list(doc["shape"]), int(doc["chunk_rows"]), list(doc["chunks"]),
                   doc.get("descr"), chunk_format)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def padded(self) -> bool:
        """Whether every chunk holds ``chunk_rows`` rows (format 2 with more than one chunk)."""
        return self.chunk_format >= 2 and len(self.chunks) > 1

    def chunk_rows_of(self, index: int) -> int:
        """The rows of the array that chunk ``index`` holds (its last may hold fewer)."""
        if not self.shape:
            return 1
        return max(0, min(self.chunk_rows, self.shape[0] - index * self.chunk_rows))

    def stored_nbytes(self, index: int) -> int:
        """The decoded size of chunk ``index``: the rows it holds, or ``chunk_rows`` when padded."""
        rows = self.chunk_rows if self.padded else self.chunk_rows_of(index)
        return rows * row_bytes(self.shape, self.numpy_dtype.itemsize)

    def checksum(self) -> str:
        """One digest for the whole array (dtype, shape and every chunk)."""
        text = f"{self.dtype}|{self.shape}|{self.chunk_rows}|{','.join(self.chunks)}"
        if self.descr is not None:
            text += f"|{self.descr}"
        return digest(text.encode())


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array of any dtype, without a copy."""
    return memoryview(array.reshape(-1).view(np.uint8)) if array.nbytes else memoryview(b"")  # type: ignore[arg-type]


def encode(block: np.ndarray, chunk_format: int = CHUNK_FORMAT, padded: bool = False) -> tuple[str, Any]:
    """``(digest, stored bytes)`` of a block: a compressed Blosc frame if a sample compresses, else a
    Blosc frame of the raw bytes (format 1: the raw bytes themselves). A ``padded`` block (a last
    chunk filled up with zeros) is always compressed: its zeros then cost almost nothing."""
    block = np.ascontiguousarray(block)
    raw = _bytes_of(block)
    sample = raw[:_SAMPLE_BYTES]
    if padded or (len(sample) and len(_COMPRESSED.encode(sample)) < _WORTH_IT * len(sample)):
        frame = _COMPRESSED.encode(block)
        if chunk_format >= 2 or len(frame) != len(raw):  # format 1 tells frames from raw bytes by size
            return digest(frame), frame
    if chunk_format >= 2:
        frame = _stored_frame(raw)
        return digest(frame), frame
    return digest(raw), raw


_FRAME_HEADERS: dict[int, bytes] = {}
_FRAME_BUFFERS = threading.local()


def _stored_frame(raw: memoryview) -> memoryview:
    """The Blosc frame of ``raw`` without compression (``clevel=0``): a 16-byte header, then the bytes.

    Its header depends only on the size (the tests check it against Blosc's own), so Blosc makes it
    once per size. The frame is assembled in a buffer the calling thread reuses for every chunk of
    that size (numpy's copy releases the GIL, a bytes concatenation does not, which stalled the
    other I/O threads); the buffer is valid until the thread's next frame, and ``BlobStore.put``
    copies or writes what it is given before returning (as it did with raw chunks, views of the
    caller's array).
    """
    n = len(raw)
    header = _FRAME_HEADERS.get(n)
    if header is None:
        header = bytes(_STORED.encode(raw)[:_HEADER])
        if len(_FRAME_HEADERS) < 1024:  # chunks of an array share a size: a few sizes in practice
            _FRAME_HEADERS[n] = header
    buffer = getattr(_FRAME_BUFFERS, "frame", None)
    if buffer is None or len(buffer) != n + _HEADER:
        buffer = _FRAME_BUFFERS.frame = np.empty(n + _HEADER, dtype=np.uint8)
    buffer[:_HEADER] = np.frombuffer(header, dtype=np.uint8)
    buffer[_HEADER:] = np.frombuffer(raw, dtype=np.uint8)  # numpy copies without holding the GIL
    return memoryview(buffer)  # type: ignore[arg-type]


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

    #: the chunk format :meth:`write` writes (a class attribute: tests set 1 to write records as before issue 15)
    chunk_format = CHUNK_FORMAT

    def _store(self, item: np.ndarray | tuple[np.ndarray, bool, int]) -> str:
        """Store one block, given alone or as ``(block, padded, chunk_format)``; return its digest."""
        block, padded, chunk_format = item if isinstance(item, tuple) else (item, False, CHUNK_FORMAT)
        name, data = encode(block, chunk_format, padded)
        key = chunk_key(name)
        if not self.blobs.freshen(key):  # content-addressed: same bytes, same key, stored once (a reused
            # chunk is freshened so that a garbage collection running meanwhile keeps it)
            self.blobs.put(key, data)
        return name

    def write_blocks(self, blocks: Iterable[np.ndarray | tuple[np.ndarray, bool]], total: int | None = None,
                     chunk_format: int | None = None) -> list[str]:
        """Store blocks in parallel (order kept) in ``chunk_format`` (default :attr:`chunk_format`); return
        their digests. A block may come as ``(block, padded)``: ``padded`` says it is a last chunk filled
        up with zeros.
        """
        chunk_format = self.chunk_format if chunk_format is None else chunk_format
        with ThreadPoolExecutor(IO_THREADS) as pool, progress_bar(total=total, desc=self.desc, unit="chunk") as bar:
            digests = []
            pending: list[Any] = []
            for item in blocks:
                block, padded = item if isinstance(item, tuple) else (item, False)
                pending.append(pool.submit(self._store, (block, padded, chunk_format)))
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
            return Manifest.of(array, 1, self.write_blocks([array.reshape(1)], 1), self.chunk_format)
        step = rows_per_chunk(array.shape, array.dtype.itemsize, self.chunk_bytes)
        digests = self.write_blocks(blocks_of(array, step, self.chunk_format), len(range(0, array.shape[0], step)))
        return Manifest.of(array, step, digests, self.chunk_format)


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


def read_chunk_into(blobs: BlobStore, name: str, target: np.ndarray, chunk_format: int = 1,
                    stored_nbytes: int | None = None) -> None:
    """Fetch chunk ``name``, verify it against its digest and decode it straight into ``target``.

    Format 2 (every chunk a Blosc frame of ``stored_nbytes`` decoded bytes, default ``target``'s
    size; more when the chunk is a padded last one): a frame of raw bytes is read after its
    header straight into ``target``'s memory and only verified; a compressed frame is verified
    and decoded into place (through a buffer when padded). Format 1: the blob is read into
    ``target``'s bytes, where a raw chunk is only verified, a Blosc frame (smaller) verified and
    decoded. On a mismatch ``target`` holds garbage and :class:`CorruptDataError` says so.
    """
    try:
        stream = blobs.open(chunk_key(name))
    except NotFoundError as exc:
        raise NotFoundError(f"chunk {name[:12]}... is missing; the record outlived its bytes: delete the "
                            "record and save the data again") from exc
    view = _bytes_of(target)
    if chunk_format >= 2:
        with stream:
            _read_frame_into(stream, name, view, len(view) if stored_nbytes is None else stored_nbytes)
        return
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
    _decode(name, data, view)


def _decode(name: str, data: Any, out: Any) -> None:
    try:
        _COMPRESSED.decode(data, out=out)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means damaged bytes
        raise CorruptDataError(f"chunk {name[:12]}... cannot be decompressed: {exc}") from exc


def _read_frame_into(stream: Any, name: str, view: memoryview, stored_nbytes: int) -> None:
    """Read the Blosc frame ``name`` from ``stream`` into ``view`` (its first ``len(view)`` decoded bytes)."""
    header = stream.read(_HEADER)
    while 0 < len(header) < _HEADER:  # a stream may return less than asked before its end
        more = stream.read(_HEADER - len(header))
        if not more:
            break
        header += more
    nbytes = int.from_bytes(header[4:8], "little") if len(header) == _HEADER else -1
    if nbytes != stored_nbytes:
        raise CorruptDataError(f"chunk {name[:12]}... does not hold the {stored_nbytes} bytes its record expects; "
                               "the record is damaged: save the data again")
    cbytes = int.from_bytes(header[12:16], "little")
    if not _HEADER <= cbytes <= nbytes + _HEADER:  # Blosc never grows data by more than its header
        raise CorruptDataError(f"chunk {name[:12]}... has a damaged header (it claims {cbytes} stored bytes for "
                               f"{nbytes}); save the data again from a good copy")
    if header[2] & _MEMCPYED and nbytes == len(view) and cbytes == nbytes + _HEADER:
        filled = _readinto(stream, view)  # raw bytes after the header: straight into the array
        extra = stream.read()
        hasher = blake3(header)
        hasher.update(view)
        if filled != len(view) or extra or hasher.hexdigest() != name:
            raise CorruptDataError(f"chunk {name[:12]}... is truncated or altered (its bytes do not match its "
                                   "digest); save the data again from a good copy")
        return
    data = np.empty(max(cbytes, _HEADER), dtype=np.uint8)  # the frame's size is in its header: one read into place
    data[:_HEADER] = np.frombuffer(header, dtype=np.uint8)
    filled = _HEADER + _readinto(stream, memoryview(data)[_HEADER:])  # type: ignore[arg-type]
    if filled != cbytes or stream.read(1):
        raise CorruptDataError(f"chunk {name[:12]}... is truncated or altered (its size does not match its "
                               "header); save the data again from a good copy")
    if digest(data) != name:
        raise CorruptDataError(f"chunk {name[:12]}... is truncated or altered (its bytes do not match its "
                               "digest); save the data again from a good copy")
    if nbytes == len(view):
        _decode(name, data, view)
    else:  # a padded last chunk: decode whole, keep the rows the array has
        whole = np.empty(nbytes, dtype=np.uint8)
        _decode(name, data, whole)
        view[:] = memoryview(whole)[:len(view)]  # type: ignore[arg-type]


def read_manifest_chunk_into(blobs: BlobStore, manifest: Manifest, index: int, target: np.ndarray) -> None:
    """Chunk ``index`` of ``manifest`` decoded into ``target`` (the rows it holds, in the array's dtype)."""
    read_chunk_into(blobs, manifest.chunks[index], target, manifest.chunk_format,
                    manifest.stored_nbytes(index) if manifest.chunk_format >= 2 else None)


def chunk_bytes(blobs: BlobStore, manifest: Manifest, index: int, buffer: np.ndarray | None = None) -> Any:
    """Chunk ``index`` decoded: the raw bytes of the whole (padded) chunk, verified against its digest.

    A format-2 chunk is read (raw) or decoded (compressed) straight into ``buffer``, a uint8 array of
    ``manifest.stored_nbytes(index)`` bytes (a new one when None), which is returned; a format-1
    chunk is read as :func:`read_chunk` does and padded.
    """
    if manifest.chunk_format < 2:
        block = read_chunk(blobs, manifest, index)
        if manifest.shape and len(manifest.chunks) > 1 and len(block) < manifest.chunk_rows:
            block = pad_rows(block, manifest.chunk_rows)
        return memoryview(np.ascontiguousarray(block).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    nbytes = manifest.stored_nbytes(index)
    if buffer is None:
        buffer = np.empty(nbytes, dtype=np.uint8)
    read_chunk_into(blobs, manifest.chunks[index], buffer, manifest.chunk_format, nbytes)
    return buffer


def chunk_frame(blobs: BlobStore, manifest: Manifest, index: int) -> bytes:
    """Chunk ``index`` as a verified format-2 Blosc frame of the whole (padded) chunk, as zarr reads it.

    A format-2 chunk is its stored bytes; a format-1 chunk (raw, or its last unpadded) is
    decoded and encoded again: the zarr view serves old records without rewriting them.
    """
    name = manifest.chunks[index]
    if manifest.chunk_format >= 2:
        try:
            data = blobs.get(chunk_key(name))
        except NotFoundError as exc:
            raise NotFoundError(f"chunk {name[:12]}... is missing; the record outlived its bytes: delete the "
                                "record and save the data again") from exc
        if digest(data) != name:
            raise CorruptDataError(f"chunk {name[:12]}... is truncated or altered (its bytes do not match its "
                                   "digest); save the data again from a good copy")
        return data
    block = read_chunk(blobs, manifest, index)
    if manifest.shape and len(manifest.chunks) > 1 and len(block) < manifest.chunk_rows:
        return bytes(encode(pad_rows(block, manifest.chunk_rows), CHUNK_FORMAT, padded=True)[1])
    return bytes(encode(block.reshape(-1) if not manifest.shape else block, CHUNK_FORMAT)[1])


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
    read_manifest_chunk_into(blobs, manifest, index, value)
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
            read_manifest_chunk_into(blobs, manifest, i, out[lo - start:hi - start])  # a whole chunk: no copy
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
            read_manifest_chunk_into(blobs, manifest, i, out[i * step:(i + 1) * step])
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
