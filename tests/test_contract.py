"""The shipped contract suite (:mod:`tensorhub.testing`), run on every backend in ``conftest.BACKENDS``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tensorhub.backends.base import BlobStore, IndexStore
from tensorhub.registry import open_stores
from tensorhub.testing import BlobStoreContract, HubContract, IndexStoreContract


@pytest.fixture
def index_store(store_uri: str) -> Iterator[IndexStore]:
    store = open_stores(store_uri, blobs=False).index
    yield store
    store.close()


@pytest.fixture
def blob_store(store_uri: str) -> Iterator[BlobStore]:
    store = open_stores(store_uri, index=False).blobs
    yield store
    store.close()


class TestIndexStore(IndexStoreContract):
    pass


class TestBlobStore(BlobStoreContract):
    pass


class TestHub(HubContract):
    pass
