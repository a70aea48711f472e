"""Storage backends. The ABCs are public; implementations are imported lazily by the registry."""

from tensorhub.backends.base import BlobStore, IndexStore

__all__ = ["BlobStore", "IndexStore"]
