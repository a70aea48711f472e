"""torch's private API: the exported-program JSON serde, module state-dict hooks, shape functions.

Private API used, each behind one function here (``models/_torch.py`` and
``models/_program_check.py`` call only these):

* ``torch._export.serde.serialize.serialize`` and ``schema.SCHEMA_VERSION``
  (:func:`serialize_program_graph`, :func:`program_schema_version`): the JSON form of an
  ``ExportedProgram``'s graph that ``torch.export.save`` writes into its archive, without the
  state dict, constants or example inputs (those are pickles there; tensorhub stores them as
  arrays). ``torch.export`` has no public way to get the graph without pickles.
* ``torch._export.serde.serialize.ExportedProgramDeserializer``, ``_bytes_to_dataclass`` and
  ``schema.ExportedProgram`` (:func:`program_deserializer`): the reverse, rebuilding the program
  from that JSON and tensors given by the caller; ``torch.export.load`` would unpickle.
* the JSON format itself: ``expr_str`` (symbolic-shape expressions, which the deserialiser
  passes to ``sympy.sympify``, i.e. evaluates) and ``guards_code`` (Python), which
  ``models/_program_check.py`` checks and drops before deserialising (:data:`EXPRESSION_KEY`,
  :data:`GUARDS_KEY`).
* ``torch.utils._sympy.functions`` (:func:`symbolic_shape_functions`): the sympy classes torch
  writes in those expressions, the only callables a stored expression may use.
* ``nn.Module._load_state_dict_pre_hooks`` / ``_load_state_dict_post_hooks`` and
  ``nn.Module._load_from_state_dict`` (:func:`has_load_state_dict_hooks`,
  :func:`has_custom_state_loader`): whether ``load_state_dict`` would run anything beyond a
  plain copy, so that tensors may be read straight into a module's memory instead.

Checked against torch 2.13.0 (CPU build).

If it changes: saving with ``example_inputs=`` or loading an exported program fails with a
``SerializationError`` that says to load with the saving torch version or with ``into=``; if
``expr_str``/``guards_code`` are renamed, the program check would no longer see the code torch
evaluates (``test_item08_torch_program_json_keys`` fails first); if the hook dicts move, loads
take the slower ``load_state_dict`` path or fail with ``AttributeError``. Each function has
one test in ``tests/test_compat_torch.py`` (``test_item08_torch_*``) that fails when torch changes it.
torch is imported inside the functions: importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

#: the JSON key of a symbolic-shape expression in a serialised program (torch ``sympify``s it)
EXPRESSION_KEY = "expr_str"
#: the JSON key of the Python guard code in a serialised program (``module()`` may ``exec`` it)
GUARDS_KEY = "guards_code"


def program_schema_version() -> list[int]:
    """The export schema version (major, minor) of this torch's program serde."""
    from torch._export.serde.schema import SCHEMA_VERSION

    return list(SCHEMA_VERSION)


def serialize_program_graph(exported: Any) -> bytes:
    """The JSON of ``exported``'s program, without its state dict, constants or example inputs."""
    from torch._export.serde.serialize import serialize

    return serialize(exported, serialize_state_dict=False, serialize_constants=False,
                     serialize_example_inputs=False).exported_program


def program_deserializer() -> Callable[[bytes, dict[str, Any], dict[str, Any]], Any]:
    """A function ``(graph JSON, state dict, constants) -> ExportedProgram``.

    Raises ``ImportError`` when this torch has no such serde (imported here, before the caller
    reads any array, so the caller can say so first).
    """
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass

    def deserialize(graph: bytes, state: dict[str, Any], constants: dict[str, Any]) -> Any:
        serialized = _bytes_to_dataclass(schema.ExportedProgram, graph)
        return ExportedProgramDeserializer().deserialize(serialized, state, constants, None)

    return deserialize


def symbolic_shape_functions() -> ModuleType:
    """torch's module of sympy functions for symbolic shapes (``FloorDiv``, ``ModularIndexing``...)."""
    import torch.utils._sympy.functions as functions

    return functions


def has_load_state_dict_hooks(module: Any) -> bool:
    """Whether ``module`` itself (not its children) has ``load_state_dict`` pre- or post-hooks."""
    return bool(module._load_state_dict_pre_hooks or module._load_state_dict_post_hooks)


def has_custom_state_loader(module: Any) -> bool:
    """Whether ``module``'s class loads its state with a ``_load_from_state_dict`` of its own, outside
    torch (torch's own loaders, e.g. BatchNorm's, only migrate old keys)."""
    import torch

    loader = type(module)._load_from_state_dict
    return loader is not torch.nn.Module._load_from_state_dict and not loader.__module__.startswith("torch.")
