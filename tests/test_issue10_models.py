"""Issue 10, items 1 and 15 (models): loading a model runs no code the loader did not choose.

A record's ``class_path`` (and a skops file's types) come from a shared, possibly hostile
store: they resolve only to a ``torch.nn.Module`` subclass in a module the loading process
imported itself, unless the caller passes ``trusted=``. A bad ``into=`` is a clear error.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tensorhub import TensorHub  # noqa: E402
from tensorhub.errors import InvalidArgumentError, SerializationError  # noqa: E402
from tensorhub.testing.torch_models import TinyMLP  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # classes defined in test modules


def _both_loaders(hub: TensorHub, **options: Any) -> list[Any]:
    """find_model and find_all_models, each expected to raise: return the errors."""
    errors = []
    for load in (hub.find_model, hub.find_all_models):
        with pytest.raises(SerializationError) as info:
            load(model_name="evil", **options)
        errors.append(info.value)
    return errors


def test_item01_class_claiming_subprocess_run_does_not_run(hub: TensorHub, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil(torch.nn.Module):
        __module__ = "subprocess"
        __qualname__ = "run"

        def __init__(self) -> None:
            super().__init__()
            self.tensorhub_init_kwargs = {"args": ["touch", str(marker)]}
            self.w = torch.nn.Parameter(torch.ones(2))

    hub.save_model(Evil(), "evil")
    assert hub.find_model(model_name="evil", into=_Plain()).w.tolist() == [1.0, 1.0]  # parameters still load
    for trusted in (None, True, ["subprocess"]):  # never a non-Module, whatever the trust
        for error in _both_loaders(hub, trusted=trusted):
            assert "into=" in str(error) and "trusted=" in str(error) and "subprocess:run" in str(error)
    assert not marker.exists()


class _Plain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


def test_item01_hand_written_builtins_open_class_path_is_refused(hub: TensorHub, tmp_path: Path) -> None:
    victim = tmp_path / "created-by-open"
    hub.save_model(TinyMLP(3, 4, 2), "evil")
    assert hub.index.update_many("models", {"model_name": "evil"}, {"$set": {
        "class_path": "builtins:open", "init_kwargs": {"file": str(victim), "mode": "w"}}}) == 1
    for trusted in (None, True):
        for error in _both_loaders(hub, trusted=trusted):
            assert "into=" in str(error) and "trusted=" in str(error) and "builtins:open" in str(error)
    assert not victim.exists()
    for path in ("os:system", "no colon", "a:b:c", "tensorhub.testing.torch_models:TinyMLP.__init__.__globals__"):
        hub.index.update_many("models", {"model_name": "evil"}, {"$set": {"class_path": path}})
        assert _both_loaders(hub, trusted=True)


def _write_module(directory: Path, name: str, marker: Path) -> None:
    """A module that defines a torch model and leaves ``marker`` behind when it is imported."""
    (directory / f"{name}.py").write_text(
        "import pathlib, torch\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, n=3):\n"
        "        super().__init__()\n"
        "        self.tensorhub_init_kwargs = {'n': n}\n"
        "        self.lin = torch.nn.Linear(n, 2)\n"
        "    def forward(self, x):\n"
        "        return self.lin(x)\n")


def test_item01_class_in_a_module_the_loader_has_not_imported_needs_trust(
        hub: TensorHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    prefix = f"th_i01_{uuid.uuid4().hex[:8]}"
    name = f"{prefix}evil"  # under no trusted prefix: "th_i01_x" must not trust "th_i01_xevil"
    marker = tmp_path / "imported"
    _write_module(tmp_path, name, marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        net = importlib.import_module(name).Net(3)
        hub.save_model(net, "evil")
        x = torch.randn(4, 3)
        assert torch.equal(hub.find_model(model_name="evil")(x), net(x))  # imported here: loads without trust
        del sys.modules[name]
        marker.unlink()
        for trusted in (None, [prefix], prefix, [f"{name}.sub"], []):
            for error in _both_loaders(hub, trusted=trusted):
                assert "trusted=" in str(error) and "into=" in str(error) and name in str(error)
        assert not marker.exists() and name not in sys.modules  # the module was never imported

        loaded = hub.find_model(model_name="evil", trusted=[name])
        assert marker.exists() and torch.equal(loaded(x), net(x))
        del sys.modules[name]
        assert torch.equal(hub.find_all_models(model_name="evil", trusted=True)[0](x), net(x))
    finally:
        sys.modules.pop(name, None)


def test_item01_bad_trusted_is_a_clear_error(hub: TensorHub) -> None:
    hub.save_model(TinyMLP(3, 4, 2), "mlp")
    for bad in (5, [3], ["ok", None], {"a": 1}, ["not a module"], [""], b"mod"):
        with pytest.raises(InvalidArgumentError, match="trusted="):
            hub.find_model(model_name="mlp", trusted=bad)


try:
    from sklearn.base import BaseEstimator, TransformerMixin
except ImportError:  # pragma: no cover - the sklearn test is skipped then
    BaseEstimator = TransformerMixin = object  # type: ignore[assignment,misc]


class _Shift(TransformerMixin, BaseEstimator):
    """A transformer of no scikit-learn module: skops does not trust its type by default."""

    def __init__(self, by: float = 1.0) -> None:
        self.by = by

    def fit(self, X: Any, y: Any = None) -> _Shift:
        self.offset_ = np.full(np.shape(X)[1], self.by)  # a fitted attribute, as scikit-learn expects
        return self

    def transform(self, X: Any) -> Any:
        return np.asarray(X) + self.offset_


def test_item01_sklearn_untrusted_type_is_refused(hub: TensorHub) -> None:
    pytest.importorskip("skops")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.arange(12.0).reshape(4, 3)
    pipe = make_pipeline(StandardScaler(), _Shift(2.0)).fit(X)
    hub.save_model(pipe, "evil")
    type_name = f"{_Shift.__module__}.{_Shift.__qualname__}"
    module = _Shift.__module__
    for trusted in (None, [module + "x"], [module[:-1]], ["numpy"]):
        for error in _both_loaders(hub, trusted=trusted):
            assert type_name in str(error) and "trusted=" in str(error)
    for trusted in ([type_name], [module], module, True):
        loaded = hub.find_model(model_name="evil", trusted=trusted)
        np.testing.assert_array_equal(loaded.transform(X), pipe.transform(X))


def test_item15_bad_into_is_a_clear_error(hub: TensorHub) -> None:
    hub.save_model(TinyMLP(3, 4, 2), "mlp")
    for bad in ("x", 3, {"hidden.weight": 1}, TinyMLP):
        for load in (hub.find_model, hub.find_all_models):
            with pytest.raises(InvalidArgumentError, match=r"into= must be a built torch\.nn\.Module"):
                load(model_name="mlp", into=bad)
    with pytest.raises(InvalidArgumentError, match="into="):  # checked even when nothing matches
        hub.find_model(model_name="absent", into="x")


def test_item01_exported_program_expression_runs_no_code(
        hub: TensorHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's deserialiser sympify()s (evals) each shape expression: a hostile one must be refused first."""
    import dataclasses

    import torch._export.serde.serialize as serde
    from torch.export import Dim

    marker = tmp_path / "pwned"
    net, x = TinyMLP(3, 4, 2).eval(), torch.randn(5, 3)
    hub.save_model(net, "fine", example_inputs=(x,), dynamic_shapes=({0: Dim("batch")},))
    assert torch.equal(hub.find_model(model_name="fine")(torch.ones(7, 3)), net(torch.ones(7, 3)))

    original = serde.serialize

    def hostile(*args: Any, **kwargs: Any) -> Any:
        artifact = original(*args, **kwargs)
        graph = artifact.exported_program.decode()
        code = f"__import__('pathlib').Path('{marker}').touch() or Symbol("
        tampered = graph.replace('"expr_str": "Symbol(', f'"expr_str": "{code}', 1)
        assert tampered != graph
        return dataclasses.replace(artifact, exported_program=tampered.encode())

    monkeypatch.setattr(serde, "serialize", hostile)
    hub.save_model(net, "evil", example_inputs=(x,), dynamic_shapes=({0: Dim("batch")},))
    for error in _both_loaders(hub, trusted=True):
        assert "into=" in str(error) and "__import__" in str(error)
    assert not marker.exists()
    assert torch.equal(hub.find_model(model_name="evil", into=TinyMLP(3, 4, 2))(x), net(x))  # parameters only
