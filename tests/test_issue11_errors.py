"""Issue 11: model adapters declare their own record fields (item 5), one error taxonomy (item 6)
and no import cycles (item 7, part); torch's private API (item 8) is in ``tests/test_compat_torch.py``.

The per-call error classes are pinned on every backend by the shipped hub contract
(``HubContract.test_wrong_calls_raise_the_documented_class_and_builtin`` and its neighbours, run
by ``tests/test_contract.py``); this file holds what is not part of that contract.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bson import ObjectId

import tensorhub
from tensorhub import TensorHub, errors
from tensorhub.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    DuplicateKeyError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ScriptError,
    ScriptNotFoundError,
    ScriptSyntaxError,
    TensorHubError,
)
from tensorhub.models import ModelAdapter, ModelReader, SavedModel, _registry, register_model_adapter

from conftest import fresh_uri

SRC = Path(tensorhub.__file__).parent


# ------------------------------------------------------------------------------ item 5: adapters declare fields
class Box:
    """A third-party model type, saved by :class:`BoxAdapter`."""

    def __init__(self, weights: np.ndarray, colour: str) -> None:
        self.weights, self.colour = weights, colour


class BoxAdapter(ModelAdapter):
    name = "box"
    record_fields = frozenset({"box_colour", "box_size"})

    def can_save(self, network: Any) -> bool:
        return isinstance(network, Box)

    def save(self, network: Any, **options: Any) -> SavedModel:
        return SavedModel({"format": "chunks", "box_colour": network.colour, "box_size": network.weights.size},
                          arrays=[("weights", network.weights)])

    def load(self, record: dict, reader: ModelReader, **options: Any) -> Any:
        return Box(reader.array("weights"), record["box_colour"])


class UndeclaredAdapter(BoxAdapter):
    """An adapter written before ``record_fields`` existed: it writes a field it does not declare."""

    name = "undeclared"
    record_fields = frozenset()

    def can_save(self, network: Any) -> bool:
        return isinstance(network, Box) and network.colour == "undeclared"

    def save(self, network: Any, **options: Any) -> SavedModel:
        return SavedModel({"format": "chunks", "shade": "dark"}, arrays=[("weights", network.weights)])

    def load(self, record: dict, reader: ModelReader, **options: Any) -> Any:
        return Box(reader.array("weights"), "undeclared")


@pytest.fixture
def adapters(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made by the test are undone after it (the registry is process-wide)."""
    monkeypatch.setattr(_registry, "_adapters", list(_registry._adapters))
    yield


def test_item05_each_adapter_declares_its_fields_and_models_own_their_union(adapters: None) -> None:
    from tensorhub import models
    from tensorhub.records import COMMON_INTERNAL_FIELDS

    assert ModelAdapter.record_fields == frozenset()
    assert {"class_path", "torch_program", "torch_version"} <= models.TorchAdapter.record_fields
    assert {"estimator_class", "sklearn_version"} <= models.SklearnAdapter.record_fields
    assert {"spec", "parameters"} <= models.ParamsAdapter.record_fields
    before = models.INTERNAL_FIELDS
    assert before == COMMON_INTERNAL_FIELDS | models.MODEL_FIELDS | models.TorchAdapter.record_fields \
        | models.SklearnAdapter.record_fields | models.ParamsAdapter.record_fields
    assert "box_colour" not in before
    register_model_adapter(BoxAdapter())  # registered after import: counts from now on
    assert models.INTERNAL_FIELDS == before | {"box_colour", "box_size"} == models.internal_fields()


def test_item05_a_third_party_adapters_fields_are_refused_as_user_tags(hub: TensorHub, adapters: None) -> None:
    register_model_adapter(BoxAdapter())
    params = [np.ones(3)]
    with pytest.raises(InvalidArgumentError, match="box_colour"):
        hub.save_model(params, "p", box_colour="red")  # any model: the field is a model field now
    with pytest.raises(InvalidArgumentError, match="box_size"):
        hub.save_model(Box(np.arange(4.0), "blue"), "b", box_size=1)
    for builtin in ("class_path", "sklearn_version", "parameters", "torch_program", "adapter", "arrays"):
        with pytest.raises(InvalidArgumentError, match=builtin):
            hub.save_model(params, "p", **{builtin: "mine"})
    assert hub.find_model(model_name="p") is None and hub.find_model(model_name="b") is None
    hub.save_model(Box(np.arange(4.0), "blue"), "b", accuracy=0.5)
    loaded = hub.find_model(model_name="b")
    assert loaded.colour == "blue" and list(loaded.weights) == [0.0, 1.0, 2.0, 3.0]
    (row,) = hub.compare_models("b")
    assert "accuracy" in row and "box_size" not in row  # an adapter's field is no user metric


def test_item05_an_adapter_field_left_undeclared_never_replaces_a_users_tag(hub: TensorHub,
                                                                            adapters: None) -> None:
    register_model_adapter(UndeclaredAdapter())
    with pytest.raises(InvalidArgumentError, match="shade"):
        hub.save_model(Box(np.ones(2), "undeclared"), "u", shade="light")
    assert hub.find_model(model_name="u") is None
    hub.save_model(Box(np.ones(2), "undeclared"), "u", tone="light")
    assert hub.find_model(model_name="u").tensorhub_record["shade"] == "dark"


def test_item05_cli_keeps_no_copy_of_the_model_fields() -> None:
    from tensorhub import models

    text = (SRC / "cli.py").read_text()
    adapter_fields = models.TorchAdapter.record_fields | models.SklearnAdapter.record_fields
    assert [f for f in sorted(adapter_fields) if re.search(rf"\b{f}\b", text)] == []
    assert "INTERNAL_FIELDS = " not in text


# ------------------------------------------------------------------------------ item 6: one error taxonomy
def _error_classes() -> list[type[BaseException]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, TensorHubError) and c.__module__ == errors.__name__]


def test_item06_every_error_class_is_exported_and_documented_with_its_builtins() -> None:
    table = errors.__doc__
    for cls in _error_classes():
        assert getattr(tensorhub, cls.__name__) is cls and cls.__name__ in tensorhub.__all__
        (row,) = [line for line in table.splitlines() if line.startswith(f"``{cls.__name__}``  ")]
        own = {b.__name__ for b in cls.__bases__ if b.__module__ == "builtins" and b is not Exception}
        assert all(f"``{b}``" in row for b in own), (cls.__name__, own, row)


def test_item06_argument_errors_are_value_errors_and_type_errors_where_python_says_so() -> None:
    assert issubclass(InvalidArgumentError, ValueError) and not issubclass(InvalidArgumentError, TypeError)
    assert issubclass(InvalidArgumentTypeError, TypeError)
    assert issubclass(InvalidArgumentTypeError, InvalidArgumentError)
    assert issubclass(DuplicateKeyError, ConflictError) and not issubclass(ConflictError, BackendUnavailableError)
    assert issubclass(ScriptNotFoundError, FileNotFoundError) and issubclass(ScriptSyntaxError, ValueError)
    assert issubclass(ScriptNotFoundError, ScriptError) and issubclass(ScriptSyntaxError, ScriptError)
    assert not issubclass(ScriptError, OSError) and not issubclass(ScriptSyntaxError, OSError)


@pytest.mark.parametrize("uri", [
    "mongodb://127.0.0.1:1/bad/name",
    "mongodb://127.0.0.1:1/a.b$c",  # pymongo would read database "a", collection "b$c"
    "mongodb://127.0.0.1:1/a%20b",
    "mongodb://127.0.0.1:1/" + "x" * 64,  # MongoDB: under 64 bytes
])
def test_item06_a_bad_mongodb_database_name_is_a_configuration_error_naming_the_rule(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="63 bytes") as caught:  # before any connection is tried
        TensorHub(uri, project_name="p")
    assert not isinstance(caught.value, BackendUnavailableError)
    with pytest.raises(ConfigurationError, match="database name"):
        TensorHub(ip="127.0.0.1", port=1, dbname="a.b", project_name="p")  # TensorLayer's signature too


def test_item06_inserting_an_existing_id_is_a_duplicate_key_error(hub: TensorHub) -> None:
    oid = ObjectId()
    hub.index.insert_many("probe", [{"_id": oid, "n": 1}])
    with pytest.raises(DuplicateKeyError, match="already exists") as caught:
        hub.index.insert_many("probe", [{"_id": oid, "n": 2}])
    assert isinstance(caught.value, ConflictError)
    assert [d["n"] for d in hub.index.find("probe", {})] == [1]


def test_item06_s3_compare_and_swap_retries_running_out_is_a_conflict(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorhub.backends.s3 import _cas

    with TensorHub(fresh_uri("s3", request, tmp_path_factory), project_name="p") as hub:
        hub.save_training_log(loss=1.0)
        monkeypatch.setattr(_cas, "CAS_ATTEMPTS", 3)
        monkeypatch.setattr(hub.index._writer, "cas", lambda *args, **kwargs: False)  # every CAS lost
        with pytest.raises(ConflictError, match="gave up") as caught:
            hub.index.update_many("training_logs", {}, {"$set": {"loss": 2.0}})
        assert not isinstance(caught.value, BackendUnavailableError)
        with pytest.raises(ConflictError):
            hub.index.find_one_and_update("training_logs", {}, {"$set": {"loss": 2.0}})
        monkeypatch.undo()
        assert [r["loss"] for r in hub.find_training_logs()] == [1.0]


# ------------------------------------------------------------------------------ item 7: no import cycles


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the tensorhub modules it imports (anywhere in it, functions included; not under
    ``if TYPE_CHECKING:``, which never runs)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for stmt in node.body for n in ast.walk(stmt)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in modules:
                        found.add(target)
                    elif base in modules:
                        found.add(base)
        graph[name] = found - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(frozenset(component))
    return out


def test_item07_the_cycle_finder_finds_cycles() -> None:
    found = _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()})
    assert found == [frozenset({"a", "b", "c"})]


def test_item07_no_import_cycles_between_modules() -> None:
    graph = _import_graph()
    assert "tensorhub.table" in graph["tensorhub.cli"] and "tensorhub.table" in graph["tensorhub.demo"]
    assert "tensorhub.task_script" in graph["tensorhub.zygote"] and "tensorhub.zygote" in graph["tensorhub.runner"]
    assert [sorted(c) for c in _cycles(graph)] == []


def test_item07_cli_still_offers_format_table() -> None:
    from tensorhub import cli, table

    assert cli.format_table is table.format_table
    lines = table.format_table([{"a": 1.23456, "b": None}], ["a", "b"]).splitlines()
    assert lines == ["a      b", "-----  -", "1.235   "]
