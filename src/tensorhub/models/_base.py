"""What a model adapter is: :class:`ModelAdapter` and what its ``save`` returns, :class:`SavedModel`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tensorhub.models._arrays import ModelReader

#: the format of records whose arrays are content-addressed chunks (listed in the ``arrays`` field)
CHUNKS_FORMAT = "chunks"


@dataclass
class SavedModel:
    """What an adapter produces: record fields, named arrays (stored as chunks) and named blobs.

    Prefer ``arrays``: they are deduplicated across saves. ``blobs`` are for the rare bytes
    that are no array (pickles when allowed), stored per record under ``models/<id>/``.
    """

    fields: dict[str, Any]
    blobs: list[tuple[str, bytes]] = field(default_factory=list)
    arrays: list[tuple[str, np.ndarray]] = field(default_factory=list)


class ModelAdapter(ABC):
    """Saves and loads one family of models. Register new ones with :func:`register_model_adapter`."""

    #: stored in the record's ``adapter`` field; must be unique
    name: str = ""
    #: the record fields :meth:`save` may write (beyond ``format``, which every adapter writes): the
    #: repository refuses user fields of these names for every model, so a user's tag is never
    #: replaced by an adapter's field, nor taken for one on load
    record_fields: frozenset[str] = frozenset()

    @abstractmethod
    def can_save(self, network: Any) -> bool:
        """Whether this adapter handles ``network`` (must not import optional frameworks needlessly)."""

    @abstractmethod
    def save(self, network: Any, **options: Any) -> SavedModel:
        """Take ``network`` apart into record fields, arrays and blobs (nothing is written here)."""

    @abstractmethod
    def load(self, record: dict, reader: ModelReader, **options: Any) -> Any:
        """Rebuild the model a record describes from ``reader`` (verified arrays and blobs)."""
