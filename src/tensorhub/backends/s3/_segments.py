"""The objects of the S3 index: immutable segments, the mutable state over each, resolved entries.

A segment (``index/<collection>/seg/<sid>.bson``) is the BSON documents of one ``insert_many``
concatenated, as in a ``mongodump`` file. A *merged* segment (``seg/<oid>.merged.bson``, written
by compaction) starts with a header document (``v``, ``sources``: the sids it replaces,
``first``: the order key of its oldest source) followed by the live documents of its sources.
A segment's state (``index/<collection>/state/<sid>.bson``) is a header document (``v``,
``rev``, ``dead``, ``deleted`` ids, and when set ``merged_into`` / ``aborted`` / ``zone``) followed by
the current version of every updated document.

Segment ids: ``<oid>`` (plain) and ``<oid>.merged`` (merged) before zone maps; since then
``<oid>.z<zone>`` and ``<oid>.z<zone>.o<first>.merged``, where ``<zone>`` is the segment's zone
map (:mod:`tensorhub.backends.s3._zones`, base64url) and ``<first>`` the merged segment's order
key (so neither needs a GET). A state's ``zone`` is the exact zone of what it resolves the
segment's documents to; a state with changes but no ``zone`` makes the segment unprunable.
How they are written and read is in
:mod:`tensorhub.backends.s3._index` (design), :mod:`~tensorhub.backends.s3._view`
(reading) and :mod:`~tensorhub.backends.s3._cas` (writing).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bson import ObjectId

from tensorhub.backends.base import Document
from tensorhub.backends.s3._zones import Zone
from tensorhub.documents import decode_document, encode_document
from tensorhub.errors import CorruptDataError


def split_bson(data: bytes, where: str) -> list[bytes]:
    """Cut concatenated BSON documents apart (each starts with its int32 length)."""
    out, pos, view = [], 0, memoryview(data)
    while pos < len(data):
        size = int.from_bytes(view[pos:pos + 4], "little")
        if size < 5 or pos + size > len(data):
            raise CorruptDataError(f"{where} is not a sequence of BSON documents (truncated or altered)")
        out.append(bytes(view[pos:pos + size]))
        pos += size
    return out


def idkey(value: Any) -> Any:
    """A hashable key for an ``_id`` (ObjectIds and other BSON scalars)."""
    return ("oid", value.binary) if isinstance(value, ObjectId) else (type(value).__name__, repr(value))


class Entry(NamedTuple):
    sid: str
    key: Any
    raw: bytes
    doc: Document  # shared with the cache: never mutated, never returned


MERGED_SUFFIX = ".merged"


def is_merged(sid: str) -> bool:
    """Whether a segment id names a merged segment (written by compaction)."""
    return sid.endswith(MERGED_SUFFIX)


class Segment:
    """An immutable segment: its documents in insertion order (decoded on first use).

    ``sources`` and ``first`` are set for a merged segment: the segments it replaces and the order
    key of the oldest of them (a plain segment's order key is its sid).
    """

    def __init__(self, raws: list[bytes], sources: list[str] | None = None, first: str | None = None) -> None:
        self.raws = raws
        self.sources = sources or []
        self.first = first
        self.nbytes = sum(len(r) for r in raws)
        self._docs: list[Document] | None = None

    @property
    def docs(self) -> list[Document]:
        if self._docs is None:  # two threads may both decode: harmless, one result wins
            self._docs = [decode_document(r) for r in self.raws]
        return self._docs

    @classmethod
    def parse(cls, data: bytes, where: str, merged: bool = False) -> Segment:
        raws = split_bson(data, where)
        if not merged:
            return cls(raws)
        if not raws:
            raise CorruptDataError(f"{where} has no header")
        header = decode_document(raws[0])
        return cls(raws[1:], sources=list(header.get("sources", [])), first=header.get("first"))

    @staticmethod
    def encode_merged(raws: list[bytes], sources: list[str], first: str) -> bytes:
        return encode_document({"v": 1, "sources": sources, "first": first}) + b"".join(raws)


@dataclass
class State:
    """The mutable overlay of one segment (absent object: ``etag=None``, no changes).

    ``merged_into`` marks a segment that a compaction copied into that merged segment (the
    content stays: it is authoritative until the merge commits). ``aborted`` is only ever the
    state of a merged segment whose merge was abandoned; a merged segment without a state is
    not committed yet.
    """

    etag: str | None = None
    rev: Any = None
    docs: dict[Any, tuple[bytes, Document]] = field(default_factory=dict)  # key -> current version
    deleted: dict[Any, Any] = field(default_factory=dict)  # key -> _id
    dead: bool = False
    merged_into: str | None = None
    aborted: bool = False
    #: the exact zone of the segment's documents as this state resolves them (None: unknown, or unchanged)
    zone: Zone | None = None
    checked: float = field(default_factory=time.monotonic)  # when this version was known current

    @classmethod
    def parse(cls, data: bytes, etag: str, where: str) -> State:
        raws = split_bson(data, where)
        if not raws:
            raise CorruptDataError(f"{where} is empty")
        header = decode_document(raws[0])
        docs = {}
        for raw in raws[1:]:
            doc = decode_document(raw)
            docs[idkey(doc["_id"])] = (raw, doc)
        zone = None
        if isinstance(header.get("zone"), Mapping):
            try:
                zone = Zone.from_doc(header["zone"])
            except (KeyError, TypeError, ValueError):
                zone = None  # unreadable: treated as unknown (the segment is read)
        return cls(etag=etag, rev=header.get("rev"), docs=docs,
                   deleted={idkey(i): i for i in header.get("deleted", [])}, dead=bool(header.get("dead")),
                   merged_into=header.get("merged_into"), aborted=bool(header.get("aborted")), zone=zone)

    def encode(self, rev: ObjectId) -> bytes:
        fields: dict[str, Any] = {"v": 1, "rev": rev, "dead": self.dead, "deleted": list(self.deleted.values())}
        if self.merged_into:
            fields["merged_into"] = self.merged_into
        if self.aborted:
            fields["aborted"] = True
        if self.zone is not None:
            fields["zone"] = self.zone.to_doc()
        header = encode_document(fields)
        return header + b"".join(raw for raw, _ in self.docs.values())
