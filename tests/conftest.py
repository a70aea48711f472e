"""Fixtures shared by every test: real servers (started once per session) and per-backend hubs.

``store_uri`` is parametrized over every backend, so a test that takes it (or ``hub``) runs on
``file://``, ``mongomock://`` and ``mongodb://`` (over TCP to a MongoDB-wire server).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator

import pytest

from tensorhub import TensorHub
from tensorhub.backends import mongomock as mongomock_backend
from tensorhub.testing.servers import mongodb_server

os.environ.setdefault("TENSORHUB_PROGRESS", "0")
_counter = itertools.count()

BACKENDS = ["file", "mongomock", "mongodb"]
#: backends whose store a runner's child process can open (not the in-process mongomock)
TASK_BACKENDS = ["file", "mongodb"]


@pytest.fixture(scope="session")
def mongodb_base() -> Iterator[str]:
    with mongodb_server() as uri:
        yield uri


def fresh_uri(backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A URI of an empty store on ``backend``."""
    unique = f"t{next(_counter)}_{uuid.uuid4().hex[:6]}"
    if backend == "file":
        return f"file://{tmp_path_factory.mktemp('store')}"
    if backend == "mongomock":
        return f"mongomock://{unique}"
    if backend == "mongodb":
        return f"{request.getfixturevalue('mongodb_base')}/{unique}"
    raise ValueError(backend)


@pytest.fixture(params=BACKENDS)
def store_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return fresh_uri(request.param, request, tmp_path_factory)


@pytest.fixture
def hub(store_uri: str) -> Iterator[TensorHub]:
    with TensorHub(store_uri, project_name="contract") as h:
        yield h


@pytest.fixture(autouse=True)
def _forget_mongomock() -> Iterator[None]:
    yield
    mongomock_backend.reset()
