"""Arrays as ``.npy`` blobs: safe (no pickle), self-describing, and sliceable by byte range.

An array is stored C-contiguous in NumPy's ``.npy`` format with ``allow_pickle=False``, so
row ``i`` of a stored array lives at a known byte offset: :class:`LazyArray` reads only the
rows a slice needs through :meth:`BlobStore.get_range`. A SHA-256 of the bytes is kept in the
record and checked on every full load, so a truncated or altered blob is an error, never a
silently wrong array.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

from tensorhub.backends.base import BlobStore
from tensorhub.errors import CorruptDataError, InvalidArgumentError

_HEADER_PROBE = 4096


def to_npy(array: np.ndarray) -> bytes:
    """``.npy`` bytes of ``array`` (C order, never pickled)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def from_npy(data: bytes, expected_sha256: str | None = None, where: str = "blob") -> np.ndarray:
    """Parse ``.npy`` bytes, verifying the checksum when one is given."""
    if expected_sha256 is not None and checksum(data) != expected_sha256:
        raise CorruptDataError(
            f"{where} does not match its checksum (truncated or altered); the stored copy is damaged, "
            "save it again from a good copy"
        )
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise CorruptDataError(f"{where} is not a readable array: {exc}") from exc


def _header(blobs: BlobStore, key: str) -> tuple[tuple[int, ...], np.dtype, int]:
    head = blobs.get_range(key, 0, _HEADER_PROBE)
    stream = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
    except (ValueError, EOFError) as exc:
        raise CorruptDataError(f"blob {key!r} has no readable .npy header: {exc}") from exc
    if fortran:
        raise CorruptDataError(f"blob {key!r} is in Fortran order; tensorhub always writes C order")
    return shape, dtype, stream.tell()


class LazyArray:
    """An array-like over a stored ``.npy`` blob that reads only the rows a slice needs.

    ``lazy[10:20]``, ``lazy[5]``, ``lazy[[1, 7, 3]]`` and ``lazy[2:9, :, 0]`` fetch just the
    byte range of the selected rows; ``np.asarray(lazy)`` loads everything.
    """

    def __init__(self, blobs: BlobStore, key: str, sha256: str | None = None) -> None:
        self._blobs = blobs
        self._key = key
        self._sha256 = sha256
        self.shape, self.dtype, self._offset = _header(blobs, key)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype}, key={self._key!r})"

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (clipped to the array), as a new in-memory array."""
        n = self.shape[0]
        start, stop = max(0, min(start, n)), max(0, min(stop, n))
        count = max(0, stop - start)
        if count == 0:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        data = self._blobs.get_range(self._key, self._offset + start * self._row_bytes, count * self._row_bytes)
        if len(data) != count * self._row_bytes:
            raise CorruptDataError(f"blob {self._key!r} is truncated: rows {start}:{stop} are incomplete")
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:])).copy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = from_npy(self._blobs.get(self._key), self._sha256, f"blob {self._key!r}")
        return array if dtype is None else array.astype(dtype)

    def __getitem__(self, key: Any) -> Any:
        if not self.shape:
            return np.asarray(self)[key]
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        n = self.shape[0]
        keeps_axis = True
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
        elif first is Ellipsis:
            return np.asarray(self)[key]
        else:
            indices = np.asarray(first)
            if indices.dtype == bool:
                indices = np.flatnonzero(indices)
            if indices.dtype.kind not in "iu":
                raise InvalidArgumentError(f"cannot index a LazyArray with {first!r}")
            indices = np.where(indices < 0, indices + n, indices)
            if indices.size and (indices.min() < 0 or indices.max() >= n):
                raise IndexError(f"an index is out of bounds for axis 0 with size {n}")
            if indices.size == 0:
                rows = self.read_rows(0, 0)
            else:
                lo, hi = int(indices.min()), int(indices.max()) + 1
                rows = self.read_rows(lo, hi)[indices - lo]
        if not rest:
            return rows
        return rows[(slice(None), *rest)] if keeps_axis else rows[rest]
