"""Issue 15, item 5: ``hub.export_model`` writes a stored model as ``model.safetensors`` or ``model.onnx``.

safetensors: a parameter set and torch models (bfloat16, bool, 0-d buffers: ``DtypeZoo``) come
out equal to what was saved, read back by the ``safetensors`` package (file://, mongodb://, s3://);
ONNX (file://): a torch model saved
with ``example_inputs`` (no class needed) and one rebuilt from its class, checked by ``onnx`` and
run by onnx's reference evaluator against the module's own output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tensorhub import TensorHub
from tensorhub.errors import InvalidArgumentError, NotFoundError, SerializationError

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file as load_torch_file  # noqa: E402

from tensorhub.testing.torch_models import DtypeZoo, TinyMLP  # noqa: E402


def test_item05_a_parameter_set_exports_to_safetensors(task_hub: TensorHub, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    params = {"dense": {"w": rng.random((300, 40), dtype=np.float32), "b": np.zeros(40)},
              "steps": [np.arange(7, dtype=np.int16), np.array(True)]}
    model_id = task_hub.save_model(params, "mlp", step=3)
    path = task_hub.export_model({"model_name": "mlp", "step": 3}, tmp_path / "model.safetensors")
    assert path == tmp_path / "model.safetensors"
    loaded = safetensors_numpy.load_file(str(path))
    assert sorted(loaded) == ["dense.b", "dense.w", "steps.0", "steps.1"]
    for name, value in [("dense.w", params["dense"]["w"]), ("dense.b", params["dense"]["b"]),
                        ("steps.0", params["steps"][0]), ("steps.1", params["steps"][1])]:
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value)
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"tensorhub_model_name": "mlp", "tensorhub_model_id": str(model_id),
                                "tensorhub_adapter": "params"}


def test_item05_torch_models_export_to_safetensors(task_hub: TensorHub, tmp_path: Path) -> None:
    torch.manual_seed(0)
    zoo = DtypeZoo()
    task_hub.save_model(zoo, "zoo")
    path = task_hub.export_model("zoo", str(tmp_path / "zoo.safetensors"))
    state = load_torch_file(str(path))
    expected = zoo.state_dict()
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():  # bfloat16, float16, bool and a 0-d int64 buffer, exact
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    by_kwargs = task_hub.export_model(None, tmp_path / "any.safetensors", model_name="zoo")
    again = load_torch_file(str(by_kwargs))
    assert sorted(again) == sorted(expected) and all(torch.equal(again[k], v) for k, v in expected.items())
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "pt"


def test_item05_torch_models_export_to_onnx(tmp_path: Path) -> None:
    """On file:// only: the export reads the model as find_model does (covered on every backend
    above), and torch.onnx's exporter takes seconds per model."""
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(1)
    net = TinyMLP(n_in=5, n_hidden=8, n_out=3)
    x = torch.randn(4, 5)
    task_hub = TensorHub(f"file://{tmp_path / 'store'}", project_name="p")
    task_hub.save_model(net, "program", example_inputs=(x,))   # loads without the class
    task_hub.save_model(net, "by_class")                         # rebuilt from testing.torch_models.TinyMLP
    with torch.no_grad():
        expected = net(x).numpy()
    for name, inputs in [("program", None), ("by_class", (x,))]:
        path = task_hub.export_model(name, tmp_path / f"{name}.onnx", example_inputs=inputs)
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        out = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})[0]
        assert np.allclose(out, expected, atol=1e-5), name
    with pytest.raises(InvalidArgumentError, match="example_inputs"):
        task_hub.export_model("by_class", tmp_path / "no_inputs.onnx")
    assert not (tmp_path / "no_inputs.onnx").exists()
    task_hub.close()


def test_item05_bad_exports_are_refused(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.save_model([np.ones(3)], "m")
        with pytest.raises(InvalidArgumentError, match=r"\.safetensors"):
            hub.export_model("m", tmp_path / "model.pt")
        with pytest.raises(NotFoundError, match="no model"):
            hub.export_model("missing", tmp_path / "model.safetensors")
        with pytest.raises(SerializationError, match="torch model"):
            hub.export_model("m", tmp_path / "model.onnx")
        hub.save_model([np.array(["text"])], "strings")
        with pytest.raises(SerializationError, match="safetensors cannot"):
            hub.export_model("strings", tmp_path / "strings.safetensors")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing half-written


def test_item05_a_dtype_read_from_a_record_names_only_a_torch_dtype() -> None:
    """The example inputs' dtype comes from a stored record: only a ``torch.dtype`` is taken, never
    another attribute of torch."""
    import torch

    from tensorhub.errors import SerializationError
    from tensorhub.models._export import _example_inputs

    good = {"torch_program": {"example_inputs": [{"shape": [2, 3], "dtype": "torch.float64"}]}}
    (x,) = _example_inputs(good, None)
    assert x.dtype == torch.float64 and tuple(x.shape) == (2, 3)
    for hostile in ("torch.load", "save", "nn", 5):
        record = {"torch_program": {"example_inputs": [{"shape": [1], "dtype": hostile}]}}
        with pytest.raises(SerializationError, match="no dtype"):
            _example_inputs(record, None)
