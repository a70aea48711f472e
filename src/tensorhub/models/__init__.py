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
One module per job:

* ``_repository``: the model records: :func:`save_model`, :func:`load_model`, lineage
  (``dataset_id``/``task_id``) and :func:`compare_models`.
* ``_base``: what an adapter is: :class:`ModelAdapter` and the :class:`SavedModel` it returns.
* ``_arrays``: named arrays as chunks: :func:`write_arrays` and the verifying :class:`ModelReader`.
* ``_registry``: :func:`register_model_adapter`, and which adapter saves or loads what.
* ``_trust``: what a record may make the loading process import (``trusted=``), and the safe
  class lookup: a class path resolves only in modules already imported (or trusted), only to
  a class of the expected base.
* ``_params``, ``_torch``, ``_sklearn``: the built-in adapters (``_torch`` also holds the
  ``torch.export`` graph serialisation without pickle; ``_program_check`` checks a stored
  program before torch's deserialiser evaluates its shape expressions).
"""

from __future__ import annotations

from typing import Any

from tensorhub.models._arrays import ModelReader, write_arrays
from tensorhub.models._base import CHUNKS_FORMAT, ModelAdapter, SavedModel
from tensorhub.models._params import ParamsAdapter, ParamsDict, ParamsList, ParamsTuple
from tensorhub.models._registry import adapter_fields, adapter_for, adapter_named, register_model_adapter
from tensorhub.models._repository import (
    COLLECTION,
    INDEXES,
    LINEAGE,
    MODEL_FIELDS,
    attach_record,
    check_load_options,
    compare_models,
    delete_models,
    find_all_models,
    internal_fields,
    lineage,
    lineage_query,
    load_model,
    metric_fields,
    save_model,
)
from tensorhub.models._sklearn import SklearnAdapter
from tensorhub.models._torch import TorchAdapter, numpy_to_tensor, tensor_to_numpy

__all__ = [
    "CHUNKS_FORMAT", "COLLECTION", "INDEXES", "INTERNAL_FIELDS", "LINEAGE", "MODEL_FIELDS", "ModelAdapter",
    "ModelReader",
    "ParamsAdapter", "ParamsDict", "ParamsList", "ParamsTuple", "SavedModel", "SklearnAdapter", "TorchAdapter",
    "adapter_fields", "adapter_for", "adapter_named", "attach_record", "check_load_options", "compare_models",
    "delete_models", "find_all_models", "internal_fields", "lineage", "lineage_query", "load_model", "metric_fields",
    "numpy_to_tensor",
    "register_model_adapter", "save_model", "tensor_to_numpy", "write_arrays",
]


def __getattr__(name: str) -> Any:
    if name == "INTERNAL_FIELDS":  # computed when read: adapters registered later count
        return internal_fields()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
