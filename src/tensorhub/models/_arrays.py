"""A model's named arrays as content-addressed chunks: :func:`write_arrays` and :class:`ModelReader`.

A record lists its arrays in the ``arrays`` field, one entry per name with the array's dtype,
shape and chunk manifest (as a dataset's schema). Chunks are shared by every record that has
the same bytes, so a checkpoint whose tensors did not change reuses them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tensorhub.arrays import checksum
from tensorhub.chunks import IO_THREADS, ChunkWriter, Manifest, blocks_of, read_manifest_chunk_into, rows_per_chunk
from tensorhub.errors import CorruptDataError, InvalidArgumentError, TensorHubError
from tensorhub.progress import progress_bar
from tensorhub.records import blob_prefix


def write_arrays(writer: ChunkWriter, arrays: Sequence[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Store named arrays as chunks in one parallel pass; return their ``arrays`` entries (manifests).

    One pass over every array's chunks keeps the I/O threads busy even for the hundreds of
    small tensors of a typical network (one pass per array would write them one by one).
    """
    plans = []
    for name, array in arrays:
        array = np.asarray(array)
        step = 1 if array.ndim == 0 else rows_per_chunk(array.shape, array.dtype.itemsize, writer.chunk_bytes)
        count = 1 if array.ndim == 0 else len(range(0, array.shape[0], step))
        plans.append((name, array, step, count))

    def blocks() -> Iterator[np.ndarray | tuple[np.ndarray, bool]]:
        for _, array, step, count in plans:
            if array.ndim == 0:
                yield array.reshape(1)
            else:
                yield from blocks_of(array, step, writer.chunk_format)  # the chunk format's blocks (a last one of several padded)

    digests = iter(writer.write_blocks(blocks(), total=sum(p[3] for p in plans)))
    entries = []
    for name, array, step, count in plans:
        manifest = Manifest.of(array, step, [next(digests) for _ in range(count)], writer.chunk_format)  # keeps structured fields
        entries.append({"name": name, "nbytes": int(array.nbytes), **manifest.to_doc()})
    return entries


class ModelReader:
    """What an adapter's ``load`` reads from: the verified arrays and blobs of one record.

    Every chunk is checked against its digest and every blob against the checksum in the
    record, so damaged bytes raise :class:`~tensorhub.errors.CorruptDataError` naming the
    model, never a wrong model. Calling the reader (``reader(name)``) reads a blob, as the
    plain ``read_blob`` function of earlier adapters did.
    """

    def __init__(self, blobs: Any, record: dict) -> None:
        self._blobs = blobs
        self.record = record
        self.entries = {entry["name"]: entry for entry in record.get("arrays", ())}

    def describe(self) -> str:
        return f"model {self.record.get('model_name')!r} ({self.record.get('_id')})"

    def blob(self, name: str) -> bytes:
        """The blob ``name`` of this record, verified against its stored checksum."""
        # where: computed from the record's id, never read from a field (it could name another record's blobs)
        data = self._blobs.get(blob_prefix("models", self.record["_id"]) + name)
        expected = self.record.get("blob_sha256", {}).get(name.replace(".", "_"))
        if expected is not None and checksum(data) != expected:
            raise CorruptDataError(f"blob {name} of {self.describe()} is truncated or altered; save the model again")
        return data

    __call__ = blob

    def array(self, name: str) -> np.ndarray:
        """One stored array, read in full."""
        return self.arrays([name])[name]

    def arrays(self, names: Sequence[str] | None = None,
               out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The arrays ``names`` (default: all), their chunks fetched and verified in parallel.

        ``out`` may give a destination per name (an array of exactly the stored dtype and
        shape, e.g. a view of a tensor's memory): chunks are decoded straight into it.
        """
        names = list(self.entries) if names is None else list(names)
        out = dict(out or {})
        jobs: list[tuple[str, Manifest, int]] = []
        result: dict[str, np.ndarray] = {}
        for name in names:
            entry = self.entries.get(name)
            if entry is None:
                raise CorruptDataError(f"{self.describe()} lists no array {name!r}; the record is incomplete, "
                                       "save the model again")
            manifest = Manifest.from_doc(entry)
            target = out.get(name)
            if target is None:
                target = np.empty(manifest.shape, dtype=manifest.numpy_dtype)
            elif target.dtype.str != np.dtype(manifest.dtype).str or list(target.shape) != manifest.shape \
                    or not target.flags.c_contiguous or not target.flags.writeable:
                raise InvalidArgumentError(f"{name}: destination {target.dtype}{target.shape} is not a writeable "
                                           f"C-contiguous array of the stored {manifest.dtype}{tuple(manifest.shape)}")
            result[name] = target
            jobs += [(name, manifest, i) for i in range(len(manifest.chunks))]

        def fill(job: tuple[str, Manifest, int]) -> None:
            name, manifest, i = job
            target = result[name]
            if manifest.shape:
                start = i * manifest.chunk_rows
                target = target[start:min(start + manifest.chunk_rows, manifest.shape[0])]
            try:
                read_manifest_chunk_into(self._blobs, manifest, i, target)
            except TensorHubError as exc:
                raise type(exc)(f"{self.describe()}, array {name}: {exc}") from exc

        desc = f"loading {self.record.get('model_name')}"
        with progress_bar(total=len(jobs), desc=desc, unit="chunk") as bar:
            if len(jobs) > 1:
                with ThreadPoolExecutor(IO_THREADS) as pool:
                    for _ in pool.map(fill, jobs):
                        bar.update()
            else:
                for job in jobs:
                    fill(job)
                    bar.update()
        return result
