"""Real servers for tests, on 127.0.0.1 and a free port: a MongoDB-wire server and an S3 endpoint.

* MongoDB: ``$TENSORHUB_TEST_MONGODB_URI`` when set; otherwise SecantusDB (PyPI ``secantusdb``,
  GPL-2, a test-only dependency) embedded in this process, storage in memory.
* S3: moto's ``ThreadedMotoServer``, driven through boto3 over real HTTP exactly as AWS.
"""

from __future__ import annotations

import contextlib
import os
import socket
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


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Yield the endpoint URL of a moto S3 server; sets dummy AWS credentials for the block."""
    from moto.server import ThreadedMotoServer

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
