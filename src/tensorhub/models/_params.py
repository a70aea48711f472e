"""The ``params`` adapter: (nested) lists, tuples and dicts of numpy arrays."""

from __future__ import annotations

from typing import Any

from tensorhub.arrays import from_npy
from tensorhub.models._arrays import ModelReader
from tensorhub.models._base import CHUNKS_FORMAT, ModelAdapter, SavedModel
from tensorhub.structure import array_paths, dumps_spec, flatten, loads_spec, unflatten


class ParamsList(list):
    """A list of parameter arrays that can also carry ``tensorhub_record`` and ``_<field>`` attributes."""


class ParamsDict(dict):
    """A dict of parameter arrays that can also carry ``tensorhub_record`` and ``_<field>`` attributes."""


class ParamsTuple(tuple):
    """A tuple of parameter arrays that can also carry ``tensorhub_record`` and ``_<field>`` attributes."""


_WRAPPERS: dict[type, type] = {list: ParamsList, dict: ParamsDict, tuple: ParamsTuple}


class ParamsAdapter(ModelAdapter):
    """Parameter sets: (nested) lists, tuples and dicts of numpy arrays, one chunked array per leaf."""

    name = "params"
    record_fields = frozenset({"spec", "parameters", "parameter_count", "pickled"})

    def can_save(self, network: Any) -> bool:
        return isinstance(network, (list, tuple, dict))

    def save(self, network: Any, **options: Any) -> SavedModel:
        flat = flatten(network, allow_pickle=bool(options.get("allow_pickle")), root="model")
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
