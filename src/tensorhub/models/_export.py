"""A stored model written out in a format other tools read: :func:`export_model`.

* ``*.safetensors`` (any parameter set): the record's arrays read straight from their chunks
  (verified), no model rebuilt and nothing of the record imported: ``params`` models under their
  structure's path (``[W, b]`` -> ``"0"``, ``"1"``; ``{"dense": {"w": ...}}`` -> ``"dense.w"``),
  torch models under their state-dict keys (bfloat16 and other dtypes numpy lacks written through
  ``safetensors.torch``, so with torch installed). The header's ``__metadata__`` names the model
  (``tensorhub_model_name``, ``tensorhub_model_id``, ``tensorhub_adapter``; ``format: pt`` for torch).
  Older records (``npy`` parameter blobs, a ``safetensors`` blob) are exported too.
* ``*.onnx`` (torch models): the module is rebuilt as ``find_model`` does (an exported program
  needs no class; a class path only what ``trusted=`` allows) and written by ``torch.onnx.export``
  (its ``torch.export``-based exporter, which needs the ``onnx`` and ``onnxscript`` packages).
  The inputs are ``example_inputs=``, or for a program saved with ``example_inputs`` zeros of the
  recorded dtypes and shapes.

Scikit-learn models are not parameter sets: they are refused (``find_model`` loads them).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from tensorhub.errors import (
    BackendNotInstalledError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    NotFoundError,
    SerializationError,
)
from tensorhub.models._arrays import ModelReader
from tensorhub.models._repository import COLLECTION, check_load_options, lineage_query, load_model
from tensorhub.records import Records
from tensorhub.structure import flatten, loads_spec

logger = logging.getLogger(__name__)
FORMATS = (".safetensors", ".onnx")
#: numpy dtypes safetensors stores (its numpy API): anything else is refused, naming the array
_SAFETENSORS_KINDS = "biuf"


def check_path(path: Any) -> Path:
    """The export path, whose suffix picks the format (before any record is read)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"path must be a str or a path, got {type(path).__name__}")
    target = Path(path)
    if target.suffix.lower() not in FORMATS:
        raise InvalidArgumentError(f"cannot tell the format of {str(target)!r}: name the file *.safetensors (the "
                                   "parameters, any model) or *.onnx (torch models)")
    return target


def export_model(records: Records, query: Any, path: Any, sort: Any = None, example_inputs: Any = None,
                 trusted: Any = None, allow_pickle: bool = False, **kwargs: Any) -> Path:
    """Write the newest (or first by ``sort``) model matching ``query`` (a model name, a filter dict or
    None, plus ``kwargs``) to ``path``, whose suffix picks the format; return the path."""
    target = check_path(path)
    load_options = check_load_options({"allow_pickle": allow_pickle, "trusted": trusted})
    if isinstance(query, str):
        kwargs["model_name"] = query
    elif isinstance(query, dict):
        kwargs = {**query, **kwargs}
    elif query is not None:
        raise InvalidArgumentTypeError(f"query must be a model name, a filter dict or None, got {type(query).__name__}")
    found = records.find(COLLECTION, lineage_query(kwargs), sort=sort, limit=1)
    if not found:
        raise NotFoundError(f"no model matches {kwargs or 'the query'}; nothing was exported")
    record = found[0]
    reader = ModelReader(records.blobs, record)
    if target.suffix.lower() == ".onnx":
        _write_onnx(records, record, reader, target, example_inputs, load_options)
    else:
        _write_safetensors(records, record, reader, target, load_options)
    logger.info("exported %s to %s", reader.describe(), target)
    return target


def _metadata(record: dict) -> dict[str, str]:
    meta = {"tensorhub_model_name": str(record.get("model_name")), "tensorhub_model_id": str(record.get("_id")),
            "tensorhub_adapter": str(record.get("adapter"))}
    if record.get("adapter") == "torch":
        meta["format"] = "pt"  # what Hugging Face's loaders expect of a torch state dict
    return meta


def _names(spec: dict, prefix: tuple[str, ...] = ()) -> dict[int, str]:
    """Leaf index -> dotted name (``"0"``, ``"dense.w"``; a bare array is ``"0"``)."""
    kind = spec["t"]
    if kind in ("array", "scalar"):
        return {spec["i"]: ".".join(prefix) or "0"}
    if kind in ("list", "tuple"):
        children = [(str(i), node) for i, node in enumerate(spec["v"])]
    elif kind == "dict":
        children = [(str(key), node) for key, node in zip(spec["k"], spec["v"])]
    else:
        return {}
    return {i: name for key, node in children for i, name in _names(node, (*prefix, key)).items()}


def _tensors(records: Records, record: dict, reader: ModelReader,
             load_options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The parameters as ``name -> array`` and, for dtypes numpy lacks, ``name -> torch dtype``."""
    adapter = record.get("adapter")
    if adapter == "params":
        if record.get("format") == "npy":  # before chunks: rebuild, then name the leaves in the same order
            flat = flatten(load_model(records, record, **load_options), allow_pickle=True)
            arrays = dict(enumerate(flat.arrays))
        else:
            arrays = {int(name): value for name, value in reader.arrays().items()}
        names = _names(loads_spec(record["spec"]))
        return {names.get(i, str(i)): value for i, value in sorted(arrays.items())}, {}
    if adapter == "torch":
        if record.get("format") == "safetensors":
            return {}, {}  # the blob is already a safetensors file: copied as it is
        entries = {p["path"]: p["dtype"] for p in record.get("parameters", ())}
        state = reader.arrays([f"state/{key}" for key in entries])
        tensors = {key: state[f"state/{key}"] for key in entries}
        torch_only = {key: dtype for key, dtype in entries.items()
                      if np.dtype(tensors[key].dtype).str != _numpy_str(dtype)}
        return tensors, torch_only
    raise SerializationError(f"{reader.describe()} is a {adapter!r} model, not a parameter set: export_model writes "
                             "the parameters of params and torch models (load this one with find_model)")


def _numpy_str(torch_dtype: str) -> str | None:
    """numpy's ``dtype.str`` of a torch dtype numpy has (else None: stored as an integer view)."""
    name = torch_dtype.removeprefix("torch.")
    aliases = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
               "short": "int16"}
    try:
        return np.dtype(aliases.get(name, name)).str
    except TypeError:
        return None


def _write_safetensors(records: Records, record: dict, reader: ModelReader, path: Path,
                       load_options: dict[str, Any]) -> None:
    if record.get("adapter") == "torch" and record.get("format") == "safetensors":
        _write_atomically(path, reader.blob("state.safetensors"))  # verified against its checksum
        return
    tensors, torch_only = _tensors(records, record, reader, load_options)
    for name, value in tensors.items():
        if name not in torch_only and (value.dtype.kind not in _SAFETENSORS_KINDS or value.dtype.fields is not None):
            raise SerializationError(f"{reader.describe()}: array {name!r} is {value.dtype}, which safetensors cannot "
                                     "store (it holds bool, integer and float tensors)")
    if torch_only:
        from safetensors.torch import save as save_torch

        from tensorhub.models._torch import numpy_to_tensor

        data = save_torch({name: numpy_to_tensor(np.require(value, requirements="C"), torch_only[name])
                           if name in torch_only else _torch_tensor(value) for name, value in tensors.items()},
                          metadata=_metadata(record))
    else:
        from safetensors.numpy import save as save_numpy

        data = save_numpy({name: np.require(value, requirements="C") for name, value in tensors.items()},
                          metadata=_metadata(record))
    _write_atomically(path, data)


def _torch_tensor(value: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.require(value, requirements="C"))


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file: a failed export leaves no partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _example_inputs(record: dict, example_inputs: Any) -> tuple:
    """The positional inputs for tracing: given, or zeros shaped as a saved program's example inputs."""
    if example_inputs is not None:
        return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    spec = (record.get("torch_program") or {}).get("example_inputs")
    if not isinstance(spec, list) or not all(isinstance(s, dict) and "shape" in s and "dtype" in s for s in spec):
        raise InvalidArgumentError(f"model {record.get('model_name')!r} was saved without example_inputs (or with "
                                   "inputs other than tensors): pass example_inputs=(tensor, ...) to export it to ONNX")
    import torch

    from tensorhub.models._torch import torch_dtype_named  # lazily, as numpy_to_tensor above

    return tuple(torch.zeros(s["shape"], dtype=torch_dtype_named(s["dtype"])) for s in spec)


def _write_onnx(records: Records, record: dict, reader: ModelReader, path: Path, example_inputs: Any,
                load_options: dict[str, Any]) -> None:
    if record.get("adapter") != "torch":
        raise SerializationError(f"{reader.describe()} is a {record.get('adapter')!r} model: ONNX export needs a torch "
                                 "model (write its parameters to a .safetensors file instead)")
    try:
        import onnx  # noqa: F401 - torch.onnx's exporter needs both
        import onnxscript  # noqa: F401
        import torch
    except ImportError as exc:
        raise BackendNotInstalledError(f"ONNX export needs torch, onnx and onnxscript ({exc.name} is missing): "
                                       "pip install 'tensorhub[onnx]'") from exc
    args = _example_inputs(record, example_inputs)
    module = load_model(records, record, **load_options)
    if record.get("torch_architecture") != "torch.export":  # a program's module is traced as exported (no eval())
        module.eval()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            program = torch.onnx.export(module, args, dynamo=True, verbose=False)
        except Exception as exc:  # noqa: BLE001 - any exporter failure: say what to do
            raise SerializationError(f"torch.onnx could not export {reader.describe()}: {type(exc).__name__}: "
                                     f"{exc}. Export its parameters to a .safetensors file instead") from exc
        if program is None:  # only the legacy exporter, which dynamo=True does not use, returns None
            raise SerializationError(f"torch.onnx returned no program for {reader.describe()}")
        program.save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
