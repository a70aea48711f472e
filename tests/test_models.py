"""Models across processes and on disk: a loader without the model's class, damaged chunks, checkpoints
over epochs, lineage recorded inside a task, the comparison table of ``tensorhub ls models``.

The per-backend behaviour (round trips, dedup counts, lineage queries, compare_models) is in the
contract suite (:mod:`tensorhub.testing.hub_contract`, models section).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tensorhub import TensorHub
from tensorhub.cli import main
from tensorhub.errors import ConfigurationError, CorruptDataError, InvalidArgumentError, SerializationError
from tensorhub.ownership import OWNER_KEY

from conftest import fresh_uri

torch = pytest.importorskip("torch")

#: a loading process that must not unpickle anything: every unpickling entry point raises
_NO_PICKLE = """
import pickle, torch
def _refuse(*args, **kwargs):
    raise AssertionError("something tried to unpickle")
class _RefusingUnpickler(pickle.Unpickler):
    load = _refuse
pickle.loads = pickle.load = torch.load = _refuse
pickle.Unpickler = _RefusingUnpickler
"""


def _run(code: str, env_path: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TENSORHUB_PROGRESS": "0"}
    env.pop("PYTHONPATH", None)
    if env_path:
        env["PYTHONPATH"] = env_path
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=240, env=env, cwd=cwd)


@pytest.fixture(params=["file", "mongodb"])
def shared_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty store other processes can open."""
    return fresh_uri(request.param, request, tmp_path_factory)


def test_importing_tensorhub_does_not_import_torch() -> None:
    done = _run("""
        import sys
        import tensorhub, tensorhub.models, tensorhub.cli
        heavy = [m for m in ("torch", "safetensors", "sklearn", "skops", "pandas") if m in sys.modules]
        assert not heavy, heavy
    """)
    assert done.returncode == 0, done.stderr


def test_a_process_without_the_class_loads_and_runs_the_exported_program(shared_uri: str, tmp_path: Path) -> None:
    """The saver defines the class in a module only it can import; the loader only imports tensorhub."""
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret_net.py").write_text(textwrap.dedent("""
        import torch

        class SecretNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv1d(2, 4, 3)
                self.norm = torch.nn.BatchNorm1d(4)
                self.head = torch.nn.Linear(4 * 6, 3)

            def forward(self, x):
                return self.head(torch.relu(self.norm(self.conv(x))).flatten(1)).softmax(-1)
    """))
    work = tmp_path / "work"
    work.mkdir()
    saved = _run(f"""
        import numpy as np, torch
        from secret_net import SecretNet
        from tensorhub import TensorHub
        torch.manual_seed(0)
        net = SecretNet()
        net.train()(torch.randn(16, 2, 8))
        net.eval()
        x = torch.randn(5, 2, 8)
        with TensorHub({shared_uri!r}, project_name="deploy") as hub:
            hub.save_model(net, "secret", test_accuracy=0.91, example_inputs=(x,))
        np.save("x.npy", x.numpy())
        np.save("y.npy", net(x).detach().numpy())
    """, env_path=str(private), cwd=work)
    assert saved.returncode == 0, saved.stderr
    loaded = _run(_NO_PICKLE + f"""
import importlib.util, numpy as np, torch
from tensorhub import TensorHub
assert importlib.util.find_spec("secret_net") is None  # this process cannot import the class
with TensorHub({shared_uri!r}, project_name="deploy") as hub:
    net = hub.find_model(model_name="secret", sort=[("test_accuracy", -1)])
y = net(torch.from_numpy(np.load("x.npy")))
np.testing.assert_allclose(y.detach().numpy(), np.load("y.npy"), rtol=1e-6, atol=1e-7)
assert net._test_accuracy == 0.91 and type(net).__name__ != "SecretNet"
print("ok", net.tensorhub_record["class_path"])
""", cwd=work)
    assert loaded.returncode == 0, loaded.stderr
    assert "ok secret_net:SecretNet" in loaded.stdout


def test_without_example_inputs_the_loader_needs_the_class(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store'}"
    with TensorHub(uri, project_name="p") as hub:
        from tensorhub.testing.torch_models import TinyMLP

        hub.save_model(TinyMLP(3, 4, 2), "mlp")
        hub.index.update_many("models", {}, {"$set": {"class_path": "no_such_module:TinyMLP"}})
        with pytest.raises(SerializationError, match="example_inputs"):
            hub.find_model(model_name="mlp")
        target = TinyMLP(3, 4, 2)
        assert hub.find_model(model_name="mlp", into=target) is target  # parameters only: no class needed


def test_truncated_chunk_on_disk_names_the_model_and_leaves_the_target_module_untouched(tmp_path: Path) -> None:
    from tensorhub.testing.torch_models import TinyMLP

    uri = f"file://{tmp_path / 'store'}"
    with TensorHub(uri, project_name="p") as hub:
        hub.save_model(TinyMLP(30, 400, 20), "victim")
        record = hub.find_model(model_name="victim").tensorhub_record
        (weight,) = [a for a in record["arrays"] if a["name"] == "state/hidden.weight"]
        path = tmp_path / "store" / "blobs" / "chunks" / weight["chunks"][0]
        path.write_bytes(path.read_bytes()[:1000])
        target = TinyMLP(30, 400, 20)
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(CorruptDataError, match=r"'victim'.*hidden\.weight"):
            hub.find_model(model_name="victim", into=target)
        assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
        with pytest.raises(CorruptDataError, match="victim"):
            hub.find_model(model_name="victim")
        path.unlink()
        with pytest.raises(LookupError, match="victim"):
            hub.find_model(model_name="victim")


def test_checkpoints_over_epochs_store_only_what_changed(tmp_path: Path) -> None:
    """A training loop saving every epoch with one layer frozen: the frozen layer is stored once."""
    from tensorhub.testing.torch_models import TinyMLP

    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        torch.manual_seed(0)
        net = TinyMLP(256, 512, 10)  # hidden.weight: 512 KiB, one chunk
        x = torch.randn(2, 256)
        hub.save_model(net, "run", epoch=0, example_inputs=(x,))
        base = len(list(hub.blobs.list("chunks/")))
        for epoch in range(1, 5):
            with torch.no_grad():
                net.out.weight.mul_(0.9)  # "training" changes the head only
            hub.save_model(net, "run", epoch=epoch, example_inputs=(x,))
            assert len(list(hub.blobs.list("chunks/"))) == base + epoch  # the head's new weight, nothing else
        sizes = [p.stat().st_size for p in (tmp_path / "store" / "blobs" / "chunks").iterdir()]
        assert sum(sizes) < 2 * sum(t.numel() * t.element_size() for t in net.state_dict().values())
        best = hub.compare_models("run", keys=["epoch"])[0]
        assert best["epoch"] == 4
        assert torch.equal(hub.find_model(_id=best["id"])(x), net(x))
        assert hub.delete_model(epoch={"$lt": 4}) == 4
        assert len(list(hub.blobs.list("chunks/"))) == base  # shared chunks stay with epoch 4
        assert torch.equal(hub.find_model(model_name="run")(x), net(x))


@pytest.mark.parametrize("in_process", [False, True], ids=["child-process", "in-process"])
def test_a_task_records_itself_on_the_models_it_saves(tmp_path: Path, in_process: bool) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from tensorhub import TensorHub
        hub = TensorHub()
        (data,) = hub.find_dataset_records("digits")
        hub.save_model([np.full(3, lr)], "mlp", dataset=data, test_accuracy=1 - lr)
    """))
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        dataset_id = hub.save_dataset([np.ones((4, 2))], "digits")
        ids = [hub.create_task("train", script, {"lr": lr}) for lr in (0.1, 0.2)]
        for _ in range(2):
            assert hub.run_task("train", in_process=in_process)
        assert [t["status"] for t in hub.find_tasks("train")] == ["finished", "finished"]
        for task_id, lr in zip(ids, (0.1, 0.2)):
            (model,) = hub.find_all_models(task_id=task_id)
            assert model._dataset_id == dataset_id and model[0][0] == lr
        rows = hub.compare_models(dataset=dataset_id, keys=["test_accuracy"])
        assert [hub.find_tasks(_id=hub.find_model(_id=r["id"])._task_id)[0]["hyper_parameters"]["lr"]
                for r in rows] == [0.1, 0.2]
        hub.save_model([np.ones(1)], "outside")
        assert "task_id" not in hub.find_model(model_name="outside").tensorhub_record


def test_ls_models_prints_the_comparison_table(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store'}"
    with TensorHub(uri, project_name="p") as hub:
        hub.save_model([np.ones(2)], "mlp", test_accuracy=0.75, loss=0.5, note="text is no metric")
        hub.save_model([np.ones(2)], "cnn", test_accuracy=0.875)
        rows = hub.compare_models()
    out = CliRunner().invoke(main, ["ls", "models", "--uri", uri, "-p", "p"])
    assert out.exit_code == 0, out.output
    header, _, *lines = out.output.strip().splitlines()
    assert header.split() == ["model_name", "time", "id", "adapter", "test_accuracy", "loss"]
    assert lines[0].startswith("cnn") and str(rows[0]["id"]) in lines[0] and "0.875" in lines[0]
    assert "0.75" in lines[1] and "0.5" in lines[1] and "text" not in out.output
    out = CliRunner().invoke(main, ["ls", "models", "--uri", uri, "-p", "p", "-q", json.dumps({"loss": 0.5})])
    assert "mlp" in out.output and "cnn" not in out.output


def test_compare_models_as_frame_needs_pandas(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.save_model([np.ones(2)], "mlp", test_accuracy=0.75)
        try:
            import pandas  # noqa: F401
        except ImportError:
            with pytest.raises(ConfigurationError, match="pip install pandas"):
                hub.compare_models(as_frame=True)
        else:
            frame = hub.compare_models(as_frame=True)
            assert list(frame["test_accuracy"]) == [0.75]
        with pytest.raises(InvalidArgumentError):
            hub.compare_models(keys=[1])


def test_records_written_before_chunked_parameters_still_load(tmp_path: Path) -> None:
    """Records of the earlier formats (npy blobs, a safetensors blob) are read by the same adapters."""
    from safetensors.torch import save as save_safetensors

    from tensorhub.arrays import checksum, to_npy
    from tensorhub.testing.torch_models import TinyMLP

    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        records = hub._records
        weights = [np.arange(6.0).reshape(2, 3), np.ones(2, np.float32)]
        blobs = [(f"param-{i}.npy", to_npy(a)) for i, a in enumerate(weights)]
        spec = {"t": "list", "v": [{"t": "array", "i": i, "dtype": a.dtype.str, "shape": list(a.shape)}
                                   for i, a in enumerate(weights)]}
        records.save("models", records.new_record({}, (), "model", {
            "model_name": "old-params", "adapter": "params", "format": "npy", "spec": json.dumps(spec),
            "blob_sha256": {n.replace(".", "_"): checksum(d) for n, d in blobs}}), blobs)
        net = TinyMLP(3, 4, 2)
        data = save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()})
        records.save("models", records.new_record({}, (), "model", {
            "model_name": "old-torch", "adapter": "torch", "format": "safetensors",
            "class_path": "tensorhub.testing.torch_models:TinyMLP", "init_kwargs": net.tensorhub_init_kwargs,
            "blob_sha256": {"state_safetensors": checksum(data)}}), [("state.safetensors", data)])
        got = hub.find_model(model_name="old-params")
        np.testing.assert_array_equal(got[0], weights[0])
        x = torch.randn(2, 3)
        assert torch.equal(hub.find_model(model_name="old-torch")(x), net(x))
        assert hub.delete_model() == 2 and list(hub.blobs.list("")) == [OWNER_KEY]


def test_fields_tensorhub_writes_cannot_be_overwritten_by_tags(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        with pytest.raises(InvalidArgumentError, match="adapter"):
            hub.save_model([np.ones(2)], "m", adapter="mine")
        # nothing written: a refused first save does not even create the store (no owner marker yet)
        assert hub.find_model() is None and set(hub.blobs.list("")) <= {OWNER_KEY}
