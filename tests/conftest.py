"""Fixtures shared by every test: real servers (started once per session) and per-backend hubs.

``store_uri`` is parametrized over every backend, so a test that takes it (or ``hub``) runs on
``file://``, ``mongomock://``, ``mongodb://`` (over TCP to a MongoDB-wire server), ``s3://`` (moto's
S3 server over HTTP) and ``mongodb+s3`` (index on MongoDB, blobs on S3).
"""

from __future__ import annotations

import itertools
import os
import textwrap
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from tensorhub import TensorHub
from tensorhub.backends import mongomock as mongomock_backend
from tensorhub.testing.servers import mongodb_server, s3_server

os.environ.setdefault("TENSORHUB_PROGRESS", "0")
_counter = itertools.count()

BACKENDS = ["file", "mongomock", "mongodb", "s3", "mongodb+s3"]
#: backends whose store a runner's child process can open (not the in-process mongomock)
TASK_BACKENDS = ["file", "mongodb", "s3"]
S3_BUCKET = "tensorhub-contract"
#: store URI -> blobs URI, for layouts whose blobs live elsewhere ("mongodb+s3")
SPLIT_BLOBS: dict[str, str] = {}


@pytest.fixture(scope="session")
def mongodb_base() -> Iterator[str]:
    with mongodb_server() as uri:
        yield uri


@pytest.fixture(scope="session")
def s3_base() -> Iterator[str]:
    """A moto S3 server (over HTTP, as AWS) with the contract bucket; yields its endpoint URL."""
    import boto3

    with s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
        yield endpoint


def fresh_uri(backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A URI of an empty store on ``backend``."""
    unique = f"t{next(_counter)}_{uuid.uuid4().hex[:6]}"
    if backend == "file":
        return f"file://{tmp_path_factory.mktemp('store')}"
    if backend == "mongomock":
        return f"mongomock://{unique}"
    if backend == "mongodb":
        return f"{request.getfixturevalue('mongodb_base')}/{unique}"
    if backend in ("s3", "mongodb+s3"):
        # credentials in the URI: a runner's task helper started before s3_base never sees the
        # AWS_* variables s3_server() sets, and tasks open the store from this URI
        s3 = (f"s3://{S3_BUCKET}/{unique}?endpoint_url={request.getfixturevalue('s3_base')}"
              "&aws_access_key_id=testing&aws_secret_access_key=testing")
        if backend == "s3":
            return s3
        uri = f"{request.getfixturevalue('mongodb_base')}/{unique}"
        SPLIT_BLOBS[uri] = s3
        return uri
    raise ValueError(backend)


@pytest.fixture(params=BACKENDS)
def store_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return fresh_uri(request.param, request, tmp_path_factory)


@pytest.fixture
def hub(store_uri: str) -> Iterator[TensorHub]:
    with TensorHub(store_uri, project_name="contract", blobs=SPLIT_BLOBS.get(store_uri)) as h:
        yield h


@pytest.fixture(params=TASK_BACKENDS)
def task_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TensorHub]:
    """A hub on each backend whose tasks a runner's child process can run."""
    with TensorHub(fresh_uri(request.param, request, tmp_path_factory), project_name="tasks") as hub:
        yield hub


def write_script(tmp_path: Path, body: str, name: str = "task.py") -> Path:
    """A task script ``name`` in ``tmp_path`` with ``body`` (dedented)."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, counts as gone; Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate: Callable[[], object], what: str = "condition", timeout: float = 30.0) -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _forget_mongomock() -> Iterator[None]:
    yield
    mongomock_backend.reset()
