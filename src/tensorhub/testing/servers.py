"""Real servers for tests, on 127.0.0.1 and a free port: a MongoDB-wire server and an S3 endpoint.

* MongoDB: ``$TENSORHUB_TEST_MONGODB_URI`` when set; otherwise SecantusDB (PyPI ``secantusdb``,
  GPL-2, a test-only dependency) embedded in this process, storage in memory.
* S3: moto's ``ThreadedMotoServer``, driven through boto3 over real HTTP exactly as AWS.
  moto checks a conditional PUT's ``If-Match``/``If-None-Match`` and then writes, with no lock
  between (moto 5.x): two concurrent compare-and-swaps on one key can both succeed, and one
  update is lost. AWS S3 does not do that, and the S3 index relies on it (a task ran twice under
  CPU load, issue 10 item 10), so :func:`s3_server` serialises moto's object PUTs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from typing import Any
from collections.abc import Iterator

ENV_MONGODB = "TENSORHUB_TEST_MONGODB_URI"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mongodb_server() -> Iterator[str]:
    """Yield the URI (no database path) of a MongoDB-wire server for the duration of the block."""
    external = os.environ.get(ENV_MONGODB)
    if external:
        yield external.rstrip("/")
        return
    from secantus import SecantusDBServer

    # no replica set: its oplog grows with every write and slows a long test session down
    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=":memory:", replica_set_name=None)
    server.start()
    try:
        yield server.uri.rstrip("/")
    finally:
        server.stop()


_PUT_LOCK = threading.Lock()


def _make_conditional_puts_atomic() -> None:
    """Run moto's PutObject (condition check + write) under one lock, as S3 does atomically."""
    from moto.s3.responses import S3Response

    put = S3Response.put_object
    if getattr(put, "_tensorhub_atomic", False):
        return

    @functools.wraps(put)
    def atomic_put(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _PUT_LOCK:
            return put(self, *args, **kwargs)

    atomic_put._tensorhub_atomic = True
    S3Response.put_object = atomic_put


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Yield the endpoint URL of a moto S3 server; sets dummy AWS credentials for the block."""
    from moto.server import ThreadedMotoServer

    _make_conditional_puts_atomic()

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
