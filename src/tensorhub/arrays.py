"""Arrays as ``.npy`` blobs: safe (no pickle) and self-describing.

Used for small standalone arrays (model parameter sets). A SHA-256 of the bytes is kept in the
record and checked on load, so a truncated or altered blob is an error, never a wrong array.
Datasets use the chunked engine in :mod:`tensorhub.chunks` instead.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np

from tensorhub.errors import CorruptDataError


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
