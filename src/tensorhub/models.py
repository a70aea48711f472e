"""Models: a registry of adapters that turn a network into safe blobs and back.

An adapter says which objects it handles, how to save them (record fields plus named blobs)
and how to load them. The record keeps the adapter's name and format, so loading never
guesses. Built in: ``params`` (lists/dicts/tuples of numpy arrays) and ``torch``
(``torch.nn.Module``: safetensors parameters, class re-imported by dotted path). torch is
imported only when a torch model is saved or loaded.
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tensorhub.arrays import checksum, from_npy, to_npy
from tensorhub.errors import CorruptDataError, InvalidArgumentError, SerializationError
from tensorhub.structure import array_paths, dumps_spec, flatten, loads_spec, unflatten

COLLECTION = "models"
ReadBlob = Callable[[str], bytes]


@dataclass
class SavedModel:
    """What an adapter produces: record fields and ``(name, bytes)`` blobs."""

    fields: dict[str, Any]
    blobs: list[tuple[str, bytes]] = field(default_factory=list)


class ModelAdapter(ABC):
    """Saves and loads one family of models. Register new ones with :func:`register_model_adapter`."""

    #: stored in the record's ``adapter`` field; must be unique
    name: str = ""

    @abstractmethod
    def can_save(self, network: Any) -> bool:
        """Whether this adapter handles ``network`` (must not import optional frameworks needlessly)."""

    @abstractmethod
    def save(self, network: Any, **options: Any) -> SavedModel:
        """Turn ``network`` into record fields and blobs."""

    @abstractmethod
    def load(self, record: dict, read_blob: ReadBlob, **options: Any) -> Any:
        """Rebuild the model a record describes; ``read_blob(name)`` returns a verified blob."""


class ParamsList(list):
    """A list of parameter arrays that can also carry ``tensorhub_record`` and ``_<field>`` attributes."""


class ParamsDict(dict):
    """A dict of parameter arrays that can also carry ``tensorhub_record`` and ``_<field>`` attributes."""


class ParamsTuple(tuple):
    """A tuple of parameter arrays that can also carry ``tensorhub_record`` and ``_<field>`` attributes."""


_WRAPPERS = {list: ParamsList, dict: ParamsDict, tuple: ParamsTuple}


class ParamsAdapter(ModelAdapter):
    """Parameter sets: (nested) lists, tuples and dicts of numpy arrays, one ``.npy`` blob per array."""

    name = "params"

    def can_save(self, network: Any) -> bool:
        return isinstance(network, (list, tuple, dict))

    def save(self, network: Any, **options: Any) -> SavedModel:
        flat = flatten(network, allow_pickle=bool(options.get("allow_pickle")))
        encoded = [to_npy(a) for a in flat.arrays]
        paths = {node["i"]: path for path, node in array_paths(flat.spec)}
        params = [{"path": paths.get(i, f"[{i}]"), "dtype": a.dtype.str, "shape": list(a.shape)}
                  for i, a in enumerate(flat.arrays)]
        blobs = [(f"param-{i}.npy", data) for i, data in enumerate(encoded)]
        blobs += [(f"pickle-{i}.bin", data) for i, data in enumerate(flat.pickles)]
        return SavedModel({"format": "npy", "spec": dumps_spec(flat.spec), "parameters": params,
                           "parameter_count": int(sum(a.size for a in flat.arrays))}, blobs)

    def load(self, record: dict, read_blob: ReadBlob, **options: Any) -> Any:
        value = unflatten(
            loads_spec(record["spec"]),
            lambda i, node: from_npy(read_blob(f"param-{i}.npy"), where=f"parameter {i}"),
            lambda i: read_blob(f"pickle-{i}.bin"),
            allow_pickle=bool(options.get("allow_pickle")),
        )
        wrapper = _WRAPPERS.get(type(value))
        return wrapper(value) if wrapper else value


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


class TorchAdapter(ModelAdapter):
    """``torch.nn.Module``: state dict as safetensors; architecture as its class's dotted path.

    The class is rebuilt with the keyword arguments in ``network.tensorhub_init_kwargs`` (a
    JSON-able dict) when the class provides it, else with none. ``into=module`` skips the
    import and loads the parameters into an existing module with a strict name/shape check.
    """

    name = "torch"

    def can_save(self, network: Any) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(network, torch.nn.Module)

    def save(self, network: Any, **options: Any) -> SavedModel:
        from safetensors.torch import save as save_safetensors

        state: dict[str, Any] = {}
        seen: set[tuple[int, int]] = set()
        for key, tensor in network.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            state[key] = tensor.clone() if ident in seen else tensor  # safetensors refuses shared memory
            seen.add(ident)
        cls = type(network)
        init_kwargs = getattr(network, "tensorhub_init_kwargs", None)
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise InvalidArgumentError("tensorhub_init_kwargs must be a dict of JSON-able constructor arguments")
        fields = {
            "format": "safetensors",
            "class_path": f"{cls.__module__}:{cls.__qualname__}",
            "init_kwargs": init_kwargs,
            "parameters": [{"path": k, "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in state.items()],
            "parameter_count": int(sum(v.numel() for v in state.values())),
        }
        return SavedModel(fields, [("state.safetensors", save_safetensors(state))])

    def load(self, record: dict, read_blob: ReadBlob, **options: Any) -> Any:
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            state = load_safetensors(read_blob("state.safetensors"))
        except SafetensorError as exc:
            raise CorruptDataError(f"the parameters of model {record['_id']} are unreadable: {exc}") from exc
        module = options.get("into")
        rebuilt = module is None
        if rebuilt:
            cls = _import_object(record["class_path"])
            module = cls(**(record.get("init_kwargs") or {}))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            hint = (" The class was rebuilt with the stored constructor arguments "
                    f"{record.get('init_kwargs') or {}}; give it a tensorhub_init_kwargs dict attribute, "
                    "or pass into=<a built module>" if rebuilt else "")
            raise InvalidArgumentError(f"the stored parameters do not fit this module: {exc}.{hint}") from exc
        return module


_adapters: list[ModelAdapter] = [TorchAdapter(), ParamsAdapter()]


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
        "torch.nn.Module, a list/dict of numpy arrays, or register one with tensorhub.register_model_adapter()"
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


def verified_reader(read: ReadBlob, record: dict) -> ReadBlob:
    """Wrap a blob reader so every blob is checked against the sha256 stored in the record."""
    sums = record.get("blob_sha256", {})

    def read_blob(name: str) -> bytes:
        data = read(name)
        expected = sums.get(name.replace(".", "_"))
        if expected is not None and checksum(data) != expected:
            raise CorruptDataError(
                f"blob {name} of model {record.get('model_name')!r} ({record['_id']}) is truncated or altered; "
                "save the model again"
            )
        return data

    return read_blob


def save_model(records: Any, network: Any, model_name: str, allow_pickle: bool = False, **fields: Any) -> Any:
    """Store ``network`` through its adapter; the record holds fields, adapter, format and blob checksums."""
    if not isinstance(model_name, str) or not model_name:
        raise InvalidArgumentError(f"model_name must be a non-empty string, got {model_name!r}")
    adapter = adapter_for(network)
    saved = adapter.save(network, allow_pickle=allow_pickle)
    record = records.new_record({
        **fields,
        **saved.fields,
        "model_name": model_name,
        "adapter": adapter.name,
        "blob_sha256": {name.replace(".", "_"): checksum(data) for name, data in saved.blobs},
    })
    return records.save(COLLECTION, record, saved.blobs)


def load_model(records: Any, record: dict, **options: Any) -> Any:
    """Rebuild the model of ``record`` with the adapter that saved it, and attach the record."""
    prefix = record.get("blob_prefix", "")
    reader = verified_reader(lambda name: records.blobs.get(prefix + name), record)
    model = adapter_named(record["adapter"]).load(record, reader, **options)
    return attach_record(model, record)
