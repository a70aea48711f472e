"""Issue 11 (structure): the S3 index split by job, declared backend capabilities, backends that
depend on nothing above them, and one ``_compat`` module per private API of a dependency.

Per-backend behaviour of the capability flags is pinned by the shipped index contract
(``tensorhub.testing.index_contract``, run by ``tests/test_contract.py`` on every backend).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import tensorhub
from tensorhub import TensorHub
from tensorhub.backends.base import IndexStore, Stores
from tensorhub.errors import TensorHubError, UnsupportedOperationError

from conftest import S3_BUCKET

SRC = Path(tensorhub.__file__).parent


class _Minimal(IndexStore):
    """An index store with the primitives only (as a third-party backend might start)."""

    def insert_many(self, collection: str, documents: Sequence[dict[str, Any]]) -> None: ...

    def find(self, collection: str, filter: Mapping[str, Any], sort: Any = None, limit: Any = None) -> list[Any]:
        return []

    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        return 0

    def find_one_and_update(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any],
                            sort: Any = None) -> Any:
        return None

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        return 0


# ------------------------------------------------------------------------------ item 4: S3 index split by job
def test_item04_s3_index_is_split_into_modules_by_job() -> None:
    for job in ("_view", "_cas", "_compaction", "_index"):
        module = importlib.import_module(f"tensorhub.backends.s3.{job}")
        assert module.__doc__ and "Job" in module.__doc__, f"{job} must say its job in its docstring"
    index = importlib.import_module("tensorhub.backends.s3._index")
    assert "Index design" in index.__doc__ and "Compaction" in index.__doc__  # the design stays in one place
    assert index.S3IndexStore.__module__ == "tensorhub.backends.s3._index"
    for name in ("_refresh", "_cas", "_change_segment", "_compact_once", "_sweep"):  # the other jobs moved out
        assert not hasattr(index.S3IndexStore, name), name


def test_item04_no_test_hook_ships_in_the_package() -> None:
    hooks = [str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if "_compaction_step" in path.read_text()]
    assert hooks == []


# ------------------------------------------------------------------------------ item 4: declared capabilities
def test_item04_capabilities_default_to_absent_on_the_abc() -> None:
    store = _Minimal()
    assert (store.supports_compaction, store.supports_cheap_count, store.supports_server_side_indexes) == (
        False, False, False)
    with pytest.raises(UnsupportedOperationError, match="supports_compaction") as caught:
        store.compact("logs")
    assert isinstance(caught.value, TensorHubError) and isinstance(caught.value, NotImplementedError)


def test_item04_backends_declare_what_they_have(hub: TensorHub) -> None:
    """Each backend's flags, as its docs describe it (the contract suite checks they are honest)."""
    declared = {"SQLiteIndexStore": (False, True, True), "MongoIndexStore": (False, True, True),
                "MongomockIndexStore": (False, True, False), "S3IndexStore": (True, False, False)}
    index = hub.index
    got = (index.supports_compaction, index.supports_cheap_count, index.supports_server_side_indexes)
    assert got == declared[type(index).__name__]


# ------------------------------------------------------------------------------ item 7: backends depend downwards
#: what a backend may import from tensorhub: the storage layer, and the utilities below every layer
_BELOW_BACKENDS = ("tensorhub.backends", "tensorhub._compat", "tensorhub.errors", "tensorhub.documents",
                   "tensorhub.query", "tensorhub.redaction")


def _tensorhub_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tensorhub"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tensorhub"):
            found.add(node.module)
    return found


def test_item07_backends_import_nothing_from_the_layers_above() -> None:
    upward = {}
    for path in sorted((SRC / "backends").rglob("*.py")):
        bad = {m for m in _tensorhub_imports(path)
               if not any(m == ok or m.startswith(ok + ".") for ok in _BELOW_BACKENDS)}
        if bad:
            upward[str(path.relative_to(SRC))] = sorted(bad)
    assert upward == {}
    for module in ("documents", "query", "errors", "redaction"):  # (and those utilities import no layer above either)
        single = SRC / f"{module}.py"
        for path in [single] if single.exists() else sorted((SRC / module).rglob("*.py")):  # query/ is a package
            assert all(m.startswith(_BELOW_BACKENDS) for m in _tensorhub_imports(path)), path


def test_item07_registry_still_exports_stores_and_redact() -> None:
    from tensorhub import registry
    from tensorhub import redaction

    assert registry.Stores is Stores
    assert registry.redact is redaction.redact_uri
    assert registry.redact("mongodb://u:pw@h/db") == "mongodb://u:***@h/db"


# ------------------------------------------------------------------------------ item 8: private APIs in _compat
def test_item08_mongomock_private_store_api() -> None:
    """mongomock's ``_store=`` and ``ServerStore``: clients on one server share data, others do not."""
    import mongomock

    from tensorhub._compat import mongomock as compat

    assert "_store" in inspect.signature(mongomock.MongoClient).parameters, \
        f"mongomock {mongomock.__version__} dropped MongoClient(_store=): update tensorhub/_compat/mongomock.py"
    server = compat.new_server()
    a, b, other = compat.client_on(server), compat.client_on(server), compat.client_on(compat.new_server())
    a["db"]["c"].insert_one({"_id": 1, "x": "shared"})
    assert b["db"]["c"].find_one({"_id": 1}) == {"_id": 1, "x": "shared"}
    assert other["db"]["c"].find_one({"_id": 1}) is None
    tz = compat.client_on(server, tz_aware=True)  # keyword arguments still reach the client
    tz["db"]["c"].insert_one({"_id": 2, "t": datetime(2024, 1, 1, tzinfo=timezone.utc)})
    assert tz["db"]["c"].find_one({"_id": 2})["t"].tzinfo is not None


def test_item08_botocore_private_session_api(s3_base: str) -> None:
    """botocore's session components: a shared data loader, and our timestamp parser on responses."""
    import boto3
    import botocore.loaders
    import botocore.session

    from tensorhub._compat import botocore as compat

    first, second = botocore.session.get_session(), botocore.session.get_session()
    loader = compat.data_loader(first)
    assert isinstance(loader, botocore.loaders.Loader)
    compat.share_data_loader(second, loader)
    assert compat.data_loader(second) is loader
    assert second.get_service_model("s3").service_name == "s3"  # (the shared loader serves the model)

    seen: list[Any] = []
    marker = datetime(2001, 2, 3, tzinfo=timezone.utc)

    def parse(value: Any) -> datetime:
        seen.append(value)
        return marker

    compat.set_timestamp_parser(second, parse)
    client = boto3.session.Session(botocore_session=second).client(
        "s3", endpoint_url=s3_base, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing")
    try:
        client.put_object(Bucket=S3_BUCKET, Key="compat-probe", Body=b"x")
        listed = client.list_objects_v2(Bucket=S3_BUCKET, Prefix="compat-probe")["Contents"]
    finally:
        client.close()
    assert seen, "botocore no longer parses timestamps with the session's parser default"
    assert [o["LastModified"] for o in listed] == [marker]
