"""Models: a registry of adapters that turn a network into safe arrays and back.

An adapter says which objects it handles, how to take one apart (record fields, named arrays,
rarely named blobs) and how to rebuild it. The record keeps the adapter's name and format, so
loading never guesses. Arrays go through the content-addressed chunk engine
(:mod:`tensorhub.chunks`): a checkpoint whose tensors did not change since the last save
reuses their chunks, the architecture of an exported program is one chunk shared by every
save of that architecture, and a delete frees only the chunks no other record uses.

Built in:

* ``params``: (nested) lists, tuples and dicts of numpy arrays;
* ``torch``: ``torch.nn.Module``; the state dict as arrays (bfloat16 and other dtypes numpy
  lacks as same-width integer views, with the torch dtype recorded); the architecture as a
  ``torch.export`` program when ``example_inputs=`` is given (loadable without the class), else
  the class's dotted path and ``tensorhub_init_kwargs``;
* ``sklearn``: scikit-learn estimators through skops (no pickle), when skops is installed.

Nothing unpickles unless the caller passes ``allow_pickle=True`` on save and on load.
torch, scikit-learn and skops are imported only when such a model is saved or loaded.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tensorhub.arrays import checksum, from_npy
from tensorhub.chunks import IO_THREADS, ChunkWriter, Manifest, read_chunk_into, rows_per_chunk
from tensorhub.context import ENV_TASK_ID
from tensorhub.errors import (
    ConfigurationError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    SerializationError,
    TensorHubError,
)
from tensorhub.progress import progress_bar
from tensorhub.records import as_object_id
from tensorhub.structure import array_paths, dumps_spec, flatten, loads_spec, unflatten

log = logging.getLogger(__name__)

COLLECTION = "models"
#: the format of records whose arrays are content-addressed chunks (listed in the ``arrays`` field)
CHUNKS_FORMAT = "chunks"
#: lineage fields: the dataset a model was trained on and the task that trained it
LINEAGE = {"dataset": ("dataset_id", "datasets"), "task": ("task_id", "tasks")}
#: fields save_model writes itself; every other field is the user's (tags and metrics)
INTERNAL_FIELDS = frozenset({
    "_id", "project_name", "time", "model_name", "adapter", "format", "spec", "parameters", "parameter_count",
    "arrays", "blob_refs", "blob_prefix", "blob_sha256", "class_path", "init_kwargs", "torch_architecture",
    "torch_program", "torch_version", "sklearn_version", "estimator_class", "pickled", "dataset_id", "task_id",
})


@dataclass
class SavedModel:
    """What an adapter produces: record fields, named arrays (stored as chunks) and named blobs.

    Prefer ``arrays``: they are deduplicated across saves. ``blobs`` are for the rare bytes
    that are no array (pickles when allowed), stored per record under ``models/<id>/``.
    """

    fields: dict[str, Any]
    blobs: list[tuple[str, bytes]] = field(default_factory=list)
    arrays: list[tuple[str, np.ndarray]] = field(default_factory=list)


class ModelReader:
    """What an adapter's ``load`` reads from: the verified arrays and blobs of one record.

    Every chunk is checked against its digest and every blob against the checksum in the
    record, so damaged bytes raise :class:`~tensorhub.errors.CorruptDataError` naming the
    model, never a wrong model. Calling the reader (``reader(name)``) reads a blob, as the
    plain ``read_blob`` function of earlier adapters did.
    """

    def __init__(self, blobs: Any, record: dict) -> None:
        self._blobs = blobs
        self.record = record
        self.entries = {entry["name"]: entry for entry in record.get("arrays", ())}

    def describe(self) -> str:
        return f"model {self.record.get('model_name')!r} ({self.record.get('_id')})"

    def blob(self, name: str) -> bytes:
        """The blob ``name`` of this record, verified against its stored checksum."""
        data = self._blobs.get(self.record.get("blob_prefix", "") + name)
        expected = self.record.get("blob_sha256", {}).get(name.replace(".", "_"))
        if expected is not None and checksum(data) != expected:
            raise CorruptDataError(f"blob {name} of {self.describe()} is truncated or altered; save the model again")
        return data

    __call__ = blob

    def array(self, name: str) -> np.ndarray:
        """One stored array, read in full."""
        return self.arrays([name])[name]

    def arrays(self, names: Sequence[str] | None = None,
               out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The arrays ``names`` (default: all), their chunks fetched and verified in parallel.

        ``out`` may give a destination per name (an array of exactly the stored dtype and
        shape, e.g. a view of a tensor's memory): chunks are decoded straight into it.
        """
        names = list(self.entries) if names is None else list(names)
        out = dict(out or {})
        jobs: list[tuple[str, Manifest, int]] = []
        result: dict[str, np.ndarray] = {}
        for name in names:
            entry = self.entries.get(name)
            if entry is None:
                raise CorruptDataError(f"{self.describe()} lists no array {name!r}; the record is incomplete, "
                                       "save the model again")
            manifest = Manifest.from_doc(entry)
            target = out.get(name)
            if target is None:
                target = np.empty(manifest.shape, dtype=_entry_dtype(entry))
            elif target.dtype.str != np.dtype(manifest.dtype).str or list(target.shape) != manifest.shape \
                    or not target.flags.c_contiguous or not target.flags.writeable:
                raise InvalidArgumentError(f"{name}: destination {target.dtype}{target.shape} is not a writeable "
                                           f"C-contiguous array of the stored {manifest.dtype}{tuple(manifest.shape)}")
            result[name] = target
            jobs += [(name, manifest, i) for i in range(len(manifest.chunks))]

        def fill(job: tuple[str, Manifest, int]) -> None:
            name, manifest, i = job
            target = result[name]
            if manifest.shape:
                start = i * manifest.chunk_rows
                target = target[start:min(start + manifest.chunk_rows, manifest.shape[0])]
            try:
                read_chunk_into(self._blobs, manifest.chunks[i], target)
            except TensorHubError as exc:
                raise type(exc)(f"{self.describe()}, array {name}: {exc}") from exc

        desc = f"loading {self.record.get('model_name')}"
        with progress_bar(total=len(jobs), desc=desc, unit="chunk") as bar:
            if len(jobs) > 1:
                with ThreadPoolExecutor(IO_THREADS) as pool:
                    for _ in pool.map(fill, jobs):
                        bar.update()
            else:
                for job in jobs:
                    fill(job)
                    bar.update()
        return result


def _entry_dtype(entry: Mapping[str, Any]) -> np.dtype:
    """An array entry's dtype; structured dtypes keep their fields (``descr``), which ``dtype.str`` loses."""
    if "descr" in entry:
        return np.lib.format.descr_to_dtype(_tuples(json.loads(entry["descr"])))
    return np.dtype(entry["dtype"])


def _tuples(descr: Any) -> Any:
    """JSON turned the descr's tuples into lists; numpy wants them back as tuples."""
    if isinstance(descr, list) and descr and isinstance(descr[0], list):
        return [tuple(_tuples(part) for part in field) for field in descr]
    return descr


class ModelAdapter(ABC):
    """Saves and loads one family of models. Register new ones with :func:`register_model_adapter`."""

    #: stored in the record's ``adapter`` field; must be unique
    name: str = ""

    @abstractmethod
    def can_save(self, network: Any) -> bool:
        """Whether this adapter handles ``network`` (must not import optional frameworks needlessly)."""

    @abstractmethod
    def save(self, network: Any, **options: Any) -> SavedModel:
        """Take ``network`` apart into record fields, arrays and blobs (nothing is written here)."""

    @abstractmethod
    def load(self, record: dict, reader: ModelReader, **options: Any) -> Any:
        """Rebuild the model a record describes from ``reader`` (verified arrays and blobs)."""


# ---------------------------------------------------------------------------- parameter sets
class ParamsList(list):
    """A list of parameter arrays that can also carry ``tensorhub_record`` and ``_<field>`` attributes."""


class ParamsDict(dict):
    """A dict of parameter arrays that can also carry ``tensorhub_record`` and ``_<field>`` attributes."""


class ParamsTuple(tuple):
    """A tuple of parameter arrays that can also carry ``tensorhub_record`` and ``_<field>`` attributes."""


_WRAPPERS = {list: ParamsList, dict: ParamsDict, tuple: ParamsTuple}


class ParamsAdapter(ModelAdapter):
    """Parameter sets: (nested) lists, tuples and dicts of numpy arrays, one chunked array per leaf."""

    name = "params"

    def can_save(self, network: Any) -> bool:
        return isinstance(network, (list, tuple, dict))

    def save(self, network: Any, **options: Any) -> SavedModel:
        flat = flatten(network, allow_pickle=bool(options.get("allow_pickle")))
        paths = {node["i"]: path for path, node in array_paths(flat.spec)}
        params = [{"path": paths.get(i, f"[{i}]"), "dtype": a.dtype.str, "shape": list(a.shape)}
                  for i, a in enumerate(flat.arrays)]
        return SavedModel(
            {"format": CHUNKS_FORMAT, "spec": dumps_spec(flat.spec), "parameters": params,
             "parameter_count": int(sum(a.size for a in flat.arrays)), "pickled": bool(flat.pickles)},
            blobs=[(f"pickle-{i}.bin", data) for i, data in enumerate(flat.pickles)],
            arrays=[(str(i), a) for i, a in enumerate(flat.arrays)],
        )

    def load(self, record: dict, reader: ModelReader, **options: Any) -> Any:
        if record.get("format") == "npy":  # records written before parameters went through chunks
            def load_array(i: int, node: dict) -> Any:
                return from_npy(reader.blob(f"param-{i}.npy"), where=f"parameter {i} of {reader.describe()}")
        else:
            arrays = reader.arrays()

            def load_array(i: int, node: dict) -> Any:
                return arrays[str(i)]
        value = unflatten(loads_spec(record["spec"]), load_array, lambda i: reader.blob(f"pickle-{i}.bin"),
                          allow_pickle=bool(options.get("allow_pickle")))
        wrapper = _WRAPPERS.get(type(value))
        return wrapper(value) if wrapper else value


# ---------------------------------------------------------------------------- PyTorch
def _import_object(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SerializationError(
            f"cannot import the model class {path!r} in this process ({exc}). Make the module importable "
            "(install or add it to PYTHONPATH), pass into=<an instance> to load only the parameters, or save "
            "with example_inputs=... to store an exported program that needs no class"
        ) from exc
    return obj


#: integer dtypes of each width, to store tensors whose dtype numpy lacks (bfloat16, float8...)
_SAME_WIDTH = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def tensor_to_numpy(tensor: Any, where: str = "tensor") -> np.ndarray:
    """A numpy view of a tensor's bytes (a copy only when it is on another device or strided).

    Dtypes numpy lacks are viewed as the integer type of the same width; the caller records
    the torch dtype (``str(tensor.dtype)``) to view them back on load.
    """
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise SerializationError(f"{where}: a {type(tensor).__qualname__} is no tensor and cannot be stored without "
                                 "pickle; pass allow_pickle=True (loading will need it too)")
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.layout != torch.strided or tensor.is_quantized:
        raise SerializationError(f"{where}: {type(tensor).__qualname__} tensors of layout {tensor.layout} and dtype "
                                 f"{tensor.dtype} cannot be stored as plain arrays; convert it to a dense tensor")
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    tensor = tensor.resolve_conj().resolve_neg().contiguous()
    try:
        return tensor.numpy()
    except TypeError:
        width = _SAME_WIDTH.get(tensor.element_size())
        if width is None:
            raise SerializationError(f"{where}: cannot store tensors of dtype {tensor.dtype}") from None
        return tensor.view(getattr(torch, width)).numpy()


def numpy_to_tensor(array: np.ndarray, torch_dtype: str) -> Any:
    """The tensor an array read back holds (a view, no copy), with its recorded torch dtype."""
    import torch

    tensor = torch.from_numpy(array)
    dtype = getattr(torch, torch_dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise SerializationError(f"this torch ({torch.__version__}) has no dtype {torch_dtype}; upgrade torch")
    return tensor if tensor.dtype == dtype else tensor.view(dtype)


def _example_spec(value: Any) -> Any:
    """A JSON description of example inputs (dtype and shape of each tensor)."""
    import torch

    if isinstance(value, torch.Tensor):
        return {"dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, (list, tuple)):
        return [_example_spec(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _example_spec(v) for k, v in value.items()}
    return repr(value)[:100]


def _plain_tensor(value: Any) -> bool:
    import torch

    return type(value) in (torch.Tensor, torch.nn.Parameter) and value.layout == torch.strided \
        and not value.is_quantized


def _fast_fill_ok(module: Any, targets: dict[str, Any], params: dict[str, dict]) -> bool:
    """Whether the stored tensors can be written straight into ``targets`` (same names, shapes, dtypes)
    without skipping anything ``load_state_dict`` would do (hooks, custom loaders, extra state)."""
    import torch

    if set(targets) != set(params):
        return False
    for sub in module.modules():
        if sub._load_state_dict_pre_hooks or sub._load_state_dict_post_hooks:
            return False
        loader = type(sub)._load_from_state_dict  # torch's own loaders (BatchNorm's...) only migrate old keys
        if loader is not torch.nn.Module._load_from_state_dict and not loader.__module__.startswith("torch."):
            return False
    return all(
        _plain_tensor(t) and t.device.type == "cpu" and t.is_contiguous()
        and str(t.dtype) == params[k]["dtype"] and list(t.shape) == params[k]["shape"]
        for k, t in targets.items())


class TorchAdapter(ModelAdapter):
    """``torch.nn.Module``: state dict as chunked arrays; architecture as an exported program or a class path.

    Save options: ``example_inputs`` (a tuple of positional arguments, or one tensor) stores a
    ``torch.export`` program that any process can load and run without the class;
    ``dynamic_shapes`` is passed to ``torch.export.export``. Without them the class is rebuilt
    from its dotted path with the keyword arguments in ``network.tensorhub_init_kwargs`` (a
    JSON-able dict) when the class provides it. Load option ``into=module`` loads only the
    parameters, into an existing module, with a strict name and shape check.

    Why not ``torch.export.save``/``load``: ``torch.export.load`` unpickles (example inputs
    fall back to ``torch.load(weights_only=False)``, and tensor subclasses and opaque
    constants are pickles). tensorhub stores what ``torch.export.save`` puts in its archive's
    ``models/model.json`` (the program as JSON, written and read by ``torch._export.serde``),
    and the weights and constants as plain arrays, so loading runs no pickle. Programs that
    hold non-tensor constants can only be stored whole, as a ``.pt2`` archive, with
    ``allow_pickle=True`` (and loaded with it).
    """

    name = "torch"

    def can_save(self, network: Any) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(network, torch.nn.Module)

    def save(self, network: Any, **options: Any) -> SavedModel:
        import torch

        allow_pickle = bool(options.get("allow_pickle"))
        cls = type(network)
        init_kwargs = getattr(network, "tensorhub_init_kwargs", None)
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise InvalidArgumentError("tensorhub_init_kwargs must be a dict of JSON-able constructor arguments")
        arrays: list[tuple[str, np.ndarray]] = []
        blobs: list[tuple[str, bytes]] = []
        params: list[dict] = []
        pickled: list[str] = []
        state = network.state_dict()
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) and allow_pickle:  # e.g. a module's get_extra_state()
                blobs.append((f"pickle-{len(pickled)}.bin", _pickle(value)))
                pickled.append(key)
                continue
            arrays.append((f"state/{key}", tensor_to_numpy(value, where=f"state_dict[{key!r}]")))
            params.append({"path": key, "dtype": str(value.dtype), "shape": list(value.shape)})
        fields: dict[str, Any] = {
            "format": CHUNKS_FORMAT,
            "torch_architecture": "class",
            "class_path": f"{cls.__module__}:{cls.__qualname__}",
            "init_kwargs": init_kwargs,
            "parameters": params,
            "parameter_count": int(sum(state[p["path"]].numel() for p in params)),
            "torch_version": torch.__version__.split("+")[0],
        }
        if pickled:
            fields["pickled"] = pickled
        example_inputs = options.get("example_inputs")
        if example_inputs is not None:
            program, program_arrays, program_blobs = self._export(network, state, example_inputs, options)
            fields.update(torch_architecture="torch.export", torch_program=program)
            arrays += program_arrays
            blobs += program_blobs
        elif cls.__module__ == "__main__":  # a warning, shown once per place, not a log line per epoch
            warnings.warn(f"{cls.__qualname__} is defined in __main__, which other processes cannot import; pass "
                          "example_inputs= to save_model to store an exported program that loads without the class",
                          UserWarning, stacklevel=4)
        return SavedModel(fields, blobs, arrays)

    def _export(self, network: Any, state: dict[str, Any], example_inputs: Any,
                options: dict[str, Any]) -> tuple[dict, list[tuple[str, np.ndarray]], list[tuple[str, bytes]]]:
        """The exported program: its JSON graph and the tensors it needs beyond the state dict."""
        import torch

        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        try:
            exported = torch.export.export(network, args, dynamic_shapes=options.get("dynamic_shapes"))
        except Exception as exc:  # noqa: BLE001 - any tracing failure: explain both ways out
            raise SerializationError(
                f"torch.export could not export {type(network).__qualname__} with these example inputs: "
                f"{type(exc).__name__}: {exc}. Fix the model for torch.export, or save without example_inputs= "
                "(the class is then re-imported by its dotted path)") from exc
        program: dict[str, Any] = {"example_inputs": _example_spec(args)}
        parameters = set(exported.graph_signature.parameters)
        safe = all(_plain_tensor(v) for v in exported.state_dict.values()) and \
            all(_plain_tensor(v) for v in exported.constants.values())
        if not safe:
            if not options.get("allow_pickle"):
                raise SerializationError(
                    "the exported program holds tensor subclasses or non-tensor constants (e.g. script objects), "
                    "which only pickle can store; pass allow_pickle=True (loading will need it too), or save "
                    "without example_inputs=")
            import io

            buffer = io.BytesIO()
            torch.export.save(exported, buffer)
            program["format"] = "pt2"
            return program, [("program.pt2", np.frombuffer(buffer.getvalue(), np.uint8))], []
        from torch._export.serde.schema import SCHEMA_VERSION
        from torch._export.serde.serialize import serialize

        graph = serialize(exported, serialize_state_dict=False, serialize_constants=False,
                          serialize_example_inputs=False).exported_program
        arrays = [("program.json", np.frombuffer(graph, np.uint8))]
        tensors = []
        for kind, values in (("state", exported.state_dict), ("constant", exported.constants)):
            for key, value in values.items():
                same = kind == "state" and key in state and state[key].data_ptr() == value.data_ptr() \
                    and state[key].shape == value.shape and state[key].dtype == value.dtype
                name = f"state/{key}" if same else f"program/{kind}/{key}"
                if not same:
                    arrays.append((name, tensor_to_numpy(value, where=f"program {kind} {key!r}")))
                tensors.append({"kind": kind, "path": key, "array": name, "dtype": str(value.dtype),
                                "parameter": key in parameters, "requires_grad": bool(value.requires_grad)})
        program.update(format="torch.export-json", schema_version=list(SCHEMA_VERSION), tensors=tensors)
        return program, arrays, []

    def load(self, record: dict, reader: ModelReader, **options: Any) -> Any:
        if record.get("format") == "safetensors":  # records written before parameters went through chunks
            return self._load_safetensors(record, reader, options)
        module = options.get("into")
        if module is None and record.get("torch_architecture") == "torch.export":
            return self._load_program(record, reader, options)
        rebuilt = module is None
        if rebuilt:
            cls = _import_object(record["class_path"])
            module = cls(**(record.get("init_kwargs") or {}))
        self._load_state(module, record, reader, in_place=rebuilt, allow_pickle=bool(options.get("allow_pickle")))
        return module

    def _load_state(self, module: Any, record: dict, reader: ModelReader, in_place: bool, allow_pickle: bool) -> None:
        """Load the stored state dict into ``module``: straight into its memory when that is safe.

        An existing module (``into=``) is changed only once every chunk has been read and
        verified, so a damaged blob leaves it as it was.
        """
        import torch

        params = {p["path"]: p for p in record["parameters"]}
        pickled = record.get("pickled") or []
        targets = module.state_dict(keep_vars=True)
        names = [f"state/{k}" for k in params]
        if not pickled and _fast_fill_ok(module, targets, params):
            if in_place:
                reader.arrays(names, out={f"state/{k}": tensor_to_numpy(t) for k, t in targets.items()})
                return
            arrays = reader.arrays(names)
            with torch.no_grad():
                for key, target in targets.items():
                    target.copy_(numpy_to_tensor(arrays[f"state/{key}"], params[key]["dtype"]))
            return
        arrays = reader.arrays(names)
        state: dict[str, Any] = {k: numpy_to_tensor(arrays[f"state/{k}"], p["dtype"]) for k, p in params.items()}
        if pickled:
            _require_pickle(allow_pickle, reader)
            import pickle

            state.update({k: pickle.loads(reader.blob(f"pickle-{i}.bin")) for i, k in enumerate(pickled)})
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            hint = (" The class was rebuilt with the stored constructor arguments "
                    f"{record.get('init_kwargs') or {}}; give it a tensorhub_init_kwargs dict attribute, "
                    "or pass into=<a built module>" if in_place else "")
            raise InvalidArgumentError(f"the stored parameters do not fit this module: {exc}.{hint}") from exc

    def _load_program(self, record: dict, reader: ModelReader, options: dict[str, Any]) -> Any:
        """The exported program's ``module()``: runnable without the model's class."""
        import torch

        program = record["torch_program"]
        if program.get("format") == "pt2":
            _require_pickle(bool(options.get("allow_pickle")), reader)
            import io

            return torch.export.load(io.BytesIO(reader.array("program.pt2").tobytes())).module()
        try:
            from torch._export.serde import schema
            from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass
        except ImportError as exc:
            raise SerializationError(f"this torch ({torch.__version__}) cannot read exported programs saved by "
                                     f"torch {record.get('torch_version')}: {exc}; pass into=<a built module> to "
                                     "load the parameters only") from exc
        tensors = program["tensors"]
        arrays = reader.arrays(["program.json", *dict.fromkeys(t["array"] for t in tensors)])
        state: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for entry in tensors:
            tensor = numpy_to_tensor(arrays[entry["array"]], entry["dtype"])
            if entry["parameter"]:
                tensor = torch.nn.Parameter(tensor, requires_grad=entry["requires_grad"])
            (state if entry["kind"] == "state" else constants)[entry["path"]] = tensor
        try:
            serialized = _bytes_to_dataclass(schema.ExportedProgram, arrays["program.json"].tobytes())
            exported = ExportedProgramDeserializer().deserialize(serialized, state, constants, None)
        except Exception as exc:  # noqa: BLE001 - a version mismatch or a damaged program: say which
            raise SerializationError(
                f"cannot rebuild the exported program of {reader.describe()} (saved with torch "
                f"{record.get('torch_version')}, export schema {program.get('schema_version')}; this is torch "
                f"{torch.__version__}): {type(exc).__name__}: {exc}. Load it with that torch version, or pass "
                "into=<a built module> to load the parameters only") from exc
        return exported.module()

    def _load_safetensors(self, record: dict, reader: ModelReader, options: dict[str, Any]) -> Any:
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            state = load_safetensors(reader.blob("state.safetensors"))
        except SafetensorError as exc:
            raise CorruptDataError(f"the parameters of {reader.describe()} are unreadable: {exc}") from exc
        module = options.get("into")
        if module is None:
            module = _import_object(record["class_path"])(**(record.get("init_kwargs") or {}))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InvalidArgumentError(f"the stored parameters do not fit this module: {exc}") from exc
        return module


def _pickle(value: Any) -> bytes:
    import pickle

    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _require_pickle(allow_pickle: bool, reader: ModelReader) -> None:
    if not allow_pickle:
        raise SerializationError(f"{reader.describe()} holds pickled Python objects; loading them can run arbitrary "
                                 "code. Pass allow_pickle=True only if you trust whoever saved it")


# ---------------------------------------------------------------------------- scikit-learn
class SklearnAdapter(ModelAdapter):
    """scikit-learn estimators through skops (a zip of JSON and arrays; no pickle).

    skops rebuilds only the types it trusts (scikit-learn's, numpy's, ...); others are
    refused unless listed in ``find_model(..., trusted=[...])``. Needs ``pip install skops``.
    """

    name = "sklearn"

    def can_save(self, network: Any) -> bool:
        sklearn_base = sys.modules.get("sklearn.base")
        return sklearn_base is not None and isinstance(network, sklearn_base.BaseEstimator)

    def save(self, network: Any, **options: Any) -> SavedModel:
        import sklearn

        skops_io = _import_skops()
        data = skops_io.dumps(network)
        cls = type(network)
        return SavedModel({"format": "skops", "estimator_class": f"{cls.__module__}:{cls.__qualname__}",
                           "sklearn_version": sklearn.__version__}, arrays=[("skops", np.frombuffer(data, np.uint8))])

    def load(self, record: dict, reader: ModelReader, **options: Any) -> Any:
        skops_io = _import_skops()
        data = reader.array("skops").tobytes()
        untrusted = skops_io.get_untrusted_types(data=data)
        trusted = list(options.get("trusted") or [])
        missing = [t for t in untrusted if t not in trusted]
        if missing:
            raise SerializationError(f"{reader.describe()} holds types skops does not trust by default: {missing}; "
                                     "pass trusted=[...those names...] to find_model if you trust whoever saved it")
        return skops_io.loads(data, trusted=trusted or None)


def _import_skops() -> Any:
    try:
        import skops.io
    except ImportError as exc:
        raise ConfigurationError("scikit-learn models are stored with skops (no pickle): pip install skops") from exc
    return skops.io


# ---------------------------------------------------------------------------- registry
_adapters: list[ModelAdapter] = [TorchAdapter(), SklearnAdapter(), ParamsAdapter()]


def register_model_adapter(adapter: ModelAdapter) -> None:
    """Add an adapter; it is tried before the built-in ones, and replaces one of the same name."""
    if not isinstance(adapter, ModelAdapter) or not adapter.name:
        raise InvalidArgumentError("an adapter must be a ModelAdapter instance with a non-empty name")
    _adapters[:] = [adapter] + [a for a in _adapters if a.name != adapter.name]


def adapter_for(network: Any) -> ModelAdapter:
    for adapter in _adapters:
        if adapter.can_save(network):
            return adapter
    raise SerializationError(
        f"no model adapter handles a {type(network).__module__}.{type(network).__qualname__}; save a "
        "torch.nn.Module, a list/dict of numpy arrays, a scikit-learn estimator, or register one with "
        "tensorhub.register_model_adapter()"
    )


def adapter_named(name: str) -> ModelAdapter:
    for adapter in _adapters:
        if adapter.name == name:
            return adapter
    raise SerializationError(f"this model was saved by the {name!r} adapter, which is not registered here; "
                             "install and register it before loading")


def attach_record(model: Any, record: dict) -> Any:
    """Expose ``record`` on ``model`` as ``tensorhub_record`` and as ``_<field>`` attributes.

    A field whose ``_<field>`` name the object already uses (e.g. torch's ``_parameters``)
    is left out, so the model keeps working; it is still in ``tensorhub_record``.
    """
    try:
        model.tensorhub_record = record
    except AttributeError:
        return model
    for key, value in record.items():
        attr = f"_{key}"
        if not hasattr(model, attr):
            setattr(model, attr, value)
    return model


# ---------------------------------------------------------------------------- saving and loading
def write_arrays(writer: ChunkWriter, arrays: Sequence[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Store named arrays as chunks in one parallel pass; return their ``arrays`` entries (manifests).

    One pass over every array's chunks keeps the I/O threads busy even for the hundreds of
    small tensors of a typical network (one pass per array would write them one by one).
    """
    plans = []
    for name, array in arrays:
        array = np.asarray(array)
        step = 1 if array.ndim == 0 else rows_per_chunk(array.shape, array.dtype.itemsize, writer.chunk_bytes)
        count = 1 if array.ndim == 0 else len(range(0, array.shape[0], step))
        plans.append((name, array, step, count))

    def blocks() -> Iterator[np.ndarray]:
        for _, array, step, count in plans:
            if array.ndim == 0:
                yield array.reshape(1)
            else:
                for i in range(count):
                    yield array[i * step:(i + 1) * step]

    digests = iter(writer.write_blocks(blocks(), total=sum(p[3] for p in plans)))
    entries = []
    for name, array, step, count in plans:
        manifest = Manifest(array.dtype.str, list(array.shape), step, [next(digests) for _ in range(count)])
        entry = {"name": name, "nbytes": int(array.nbytes), **manifest.to_doc()}
        if array.dtype.fields is not None:
            entry["descr"] = json.dumps(np.lib.format.dtype_to_descr(array.dtype))
        entries.append(entry)
    return entries


def lineage(records: Any, dataset: Any = None, task: Any = None) -> dict[str, Any]:
    """``dataset_id``/``task_id`` fields from records or ids; inside a task, its id by default.

    An explicit reference must name an existing record (of any project), so a typo fails at
    save time instead of leaving a model whose lineage leads nowhere.
    """
    fields: dict[str, Any] = {}
    for kind, value in (("dataset", dataset), ("task", task)):
        if value is None:
            continue
        key, collection = LINEAGE[kind]
        try:
            oid = as_object_id(value)
        except InvalidArgumentError:
            raise InvalidArgumentError(
                f"{kind}= must be a {kind} record or its id (ObjectId or 24-hex string), got {value!r}; to tag "
                f"a model with a name, use another field, e.g. {kind}_name=...") from None
        if not records.index.find(collection, {"_id": oid}, limit=1):
            raise NotFoundError(f"no {kind} has the id {oid}; pass the record returned by find_{kind}_records/"
                                f"find_tasks, or the id save_{kind}/create_{kind} returned")
        fields[key] = oid
    task_env = os.environ.get(ENV_TASK_ID)
    if "task_id" not in fields and task_env:
        try:
            fields["task_id"] = as_object_id(task_env)
        except InvalidArgumentError:
            log.warning("ignoring %s=%r: not a task id", ENV_TASK_ID, task_env)
    return fields


def lineage_query(query: dict[str, Any]) -> dict[str, Any]:
    """A model query where ``dataset=``/``task=`` mean ``dataset_id``/``task_id`` and ids may be records or hex."""
    for kind, (key, _) in LINEAGE.items():
        if kind in query:
            if key in query:
                raise InvalidArgumentError(f"pass {kind}= or {key}=, not both")
            query[key] = query.pop(kind)
        value = query.get(key)
        if isinstance(value, str) or (isinstance(value, Mapping) and "_id" in value):
            query[key] = as_object_id(value)
    return query


def save_model(records: Any, network: Any, model_name: str, allow_pickle: bool = False,
               example_inputs: Any = None, dynamic_shapes: Any = None, dataset: Any = None, task: Any = None,
               **fields: Any) -> Any:
    """Store ``network`` through its adapter; return the record id.

    The record holds the user's ``fields``, ``model_name``, the adapter and its format, the
    adapter's fields, lineage (``dataset_id``/``task_id``) and the manifests of its arrays;
    the arrays' chunks are written first and listed in ``blob_refs``.
    """
    if not isinstance(model_name, str) or not model_name:
        raise InvalidArgumentError(f"model_name must be a non-empty string, got {model_name!r}")
    dataset = fields.pop("dataset_id", None) if dataset is None else dataset
    task = fields.pop("task_id", None) if task is None else task
    clash = sorted(INTERNAL_FIELDS & set(fields))
    if clash:
        raise InvalidArgumentError(f"field(s) {clash} are written by tensorhub itself; rename them")
    adapter = adapter_for(network)
    options = {"allow_pickle": allow_pickle}
    if example_inputs is not None:
        options["example_inputs"] = example_inputs
    if dynamic_shapes is not None:
        options["dynamic_shapes"] = dynamic_shapes
    saved = adapter.save(network, **options)
    record = records.new_record({  # validates every field before anything is written
        **fields,
        **saved.fields,
        **lineage(records, dataset, task),
        "model_name": model_name,
        "adapter": adapter.name,
        "blob_sha256": {name.replace(".", "_"): checksum(data) for name, data in saved.blobs},
    })
    writer = ChunkWriter(records.blobs, desc=f"saving {model_name}")
    try:
        record["arrays"] = write_arrays(writer, saved.arrays)
    except BaseException:
        records.release_chunks(writer.refs)
        raise
    return records.save(COLLECTION, record, saved.blobs, refs=writer.refs)


def load_model(records: Any, record: dict, **options: Any) -> Any:
    """Rebuild the model of ``record`` with the adapter that saved it, and attach the record."""
    model = adapter_named(record["adapter"]).load(record, ModelReader(records.blobs, record), **options)
    return attach_record(model, record)


# ---------------------------------------------------------------------------- comparison
def _get(record: Mapping[str, Any], key: str) -> Any:
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def metric_fields(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The user's numeric fields across ``records`` (first seen first): what a comparison shows."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in INTERNAL_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
                keys.setdefault(key)
    return list(keys)


def compare_models(records: Any, model_name: str | None = None, keys: Sequence[str] | str | None = None,
                   sort: Any = None, as_frame: bool = False, limit: int | None = None, **query: Any) -> Any:
    """One row per matching model: ``model_name``, ``time``, ``id``, ``adapter`` and its metrics.

    ``keys`` picks the columns (dotted paths reach into sub-documents); by default every numeric
    field the user saved. Sorted by ``sort``, else by the first of ``keys`` descending (models
    without it last), else newest first. Reads records only, never parameters.
    """
    if isinstance(keys, str):
        keys = [keys]
    if keys is not None and (not all(isinstance(k, str) and k for k in keys)):
        raise InvalidArgumentError(f"keys must be field names, got {keys!r}")
    query = lineage_query(query)
    if model_name is not None:
        query["model_name"] = model_name
    if sort is None and keys:
        sort = [(keys[0], -1)]
    found = records.find(COLLECTION, query, sort=sort, limit=limit)
    columns = list(keys) if keys is not None else metric_fields(found)
    rows = [{"model_name": r.get("model_name"), "time": r.get("time"), "id": r["_id"], "adapter": r.get("adapter"),
             **{k: _get(r, k) for k in columns}} for r in found]
    if not as_frame:
        return rows
    try:
        import pandas
    except ImportError as exc:
        raise ConfigurationError("as_frame=True needs pandas (pip install pandas); without it, compare_models "
                                 "returns a list of dicts") from exc
    return pandas.DataFrame(rows, columns=["model_name", "time", "id", "adapter", *columns])
