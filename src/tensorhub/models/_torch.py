"""The ``torch`` adapter: ``torch.nn.Module`` as its state dict and an exported program or class path.

torch is imported only inside the functions that need it, so importing this module is cheap.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np

from tensorhub._compat import torch as torch_compat
from tensorhub.errors import CorruptDataError, InvalidArgumentError, InvalidArgumentTypeError, SerializationError
from tensorhub.models._arrays import ModelReader
from tensorhub.models._base import CHUNKS_FORMAT, ModelAdapter, SavedModel
from tensorhub.models._program_check import checked_program
from tensorhub.models._trust import Trust, check_trusted, resolve_class


def _model_class(record: dict, reader: ModelReader, trust: Trust) -> Any:
    """The ``torch.nn.Module`` subclass a record's ``class_path`` names, if this process may use it."""
    import torch

    return resolve_class(record.get("class_path", ""), torch.nn.Module, "torch.nn.Module", trust, reader.describe())


def _init_kwargs(record: dict, reader: ModelReader) -> dict[str, Any]:
    kwargs = record.get("init_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CorruptDataError(f"{reader.describe()}: init_kwargs is not a dict of keyword arguments; pass "
                               "into=<a built module> to load the parameters only")
    return kwargs


def check_into(into: Any) -> None:
    """``into=`` must be a built ``torch.nn.Module`` (or None): say so instead of failing inside torch."""
    torch = sys.modules.get("torch")
    if into is not None and not (torch is not None and isinstance(into, torch.nn.Module)):
        raise InvalidArgumentTypeError(f"into= must be a built torch.nn.Module (an instance of the model's class) "
                                       f"whose parameters are overwritten, or None to rebuild the model; got a "
                                       f"{type(into).__qualname__}")


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
    dtype = torch_dtype_named(torch_dtype)
    return tensor if tensor.dtype == dtype else tensor.view(dtype)


def torch_dtype_named(name: Any) -> Any:
    """The ``torch.dtype`` a record names (``"torch.float32"``): only a dtype, never another attribute
    of torch (the name is read from a record, and a shared store is hostile input)."""
    import torch

    dtype = getattr(torch, name.removeprefix("torch."), None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise SerializationError(f"this torch ({torch.__version__}) has no dtype {name!r}; upgrade torch, or the "
                                 "record is damaged")
    return dtype


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
    if set(targets) != set(params):
        return False
    for sub in module.modules():
        if torch_compat.has_load_state_dict_hooks(sub) or torch_compat.has_custom_state_loader(sub):
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
    JSON-able dict) when the class provides it; on load that path must name a
    ``torch.nn.Module`` subclass in a module the loader imported itself, or one ``trusted=``
    covers (see :mod:`tensorhub.models._trust`). Load option ``into=module`` loads only the
    parameters, into an existing module, with a strict name and shape check.

    Why not ``torch.export.save``/``load``: ``torch.export.load`` unpickles (example inputs
    fall back to ``torch.load(weights_only=False)``, and tensor subclasses and opaque
    constants are pickles). tensorhub stores what ``torch.export.save`` puts in its archive's
    ``models/model.json`` (the program as JSON, written and read by ``torch._export.serde``, private
    API reached only through :mod:`tensorhub._compat.torch`),
    and the weights and constants as plain arrays, so loading runs no pickle. Programs that
    hold non-tensor constants can only be stored whole, as a ``.pt2`` archive, with
    ``allow_pickle=True`` (and loaded with it).
    """

    name = "torch"
    record_fields = frozenset({"torch_architecture", "class_path", "init_kwargs", "parameters", "parameter_count",
                               "torch_version", "pickled", "torch_program"})

    def can_save(self, network: Any) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(network, torch.nn.Module)

    def save(self, network: Any, **options: Any) -> SavedModel:
        import torch

        allow_pickle = bool(options.get("allow_pickle"))
        cls = type(network)
        init_kwargs = getattr(network, "tensorhub_init_kwargs", None)
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise InvalidArgumentTypeError("tensorhub_init_kwargs must be a dict of JSON-able constructor arguments")
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
        graph = torch_compat.serialize_program_graph(exported)
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
        program.update(format="torch.export-json", schema_version=torch_compat.program_schema_version(),
                       tensors=tensors)
        return program, arrays, []

    def load(self, record: dict, reader: ModelReader, **options: Any) -> Any:
        if record.get("format") == "safetensors":  # records written before parameters went through chunks
            return self._load_safetensors(record, reader, options)
        module = options.get("into")
        check_into(module)
        if module is None and record.get("torch_architecture") == "torch.export":
            return self._load_program(record, reader, options)
        rebuilt = module is None
        if rebuilt:
            cls = _model_class(record, reader, check_trusted(options.get("trusted")))
            module = cls(**_init_kwargs(record, reader))
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
            deserialize = torch_compat.program_deserializer()
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
        graph = checked_program(arrays["program.json"].tobytes(), reader.describe())  # before torch evals it
        try:
            exported = deserialize(graph, state, constants)
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
        check_into(module)
        if module is None:
            module = _model_class(record, reader, check_trusted(options.get("trusted")))(**_init_kwargs(record, reader))
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
