"""An unpickler that rebuilds numpy arrays, numpy scalars and Python containers/scalars, and nothing else.

Unpickling calls whatever callable the pickle names, so a pickle read from a shared database
can run any code (``os.system`` through ``__reduce__``). :class:`RestrictedUnpickler` resolves
only the names in :data:`ALLOWED`: numpy's array/scalar/dtype reconstruction and Python's
builtin containers and scalars, under both the Python 3 and the Python 2 (``__builtin__``)
module names. Any other name raises :class:`RefusedPickle` before it is imported or called.
Constructors that take a size (``bytes(n)``, ``bytearray(n)``) and ``_codecs.encode`` (which
Python 3 pickles of bytes at protocol 2 use) are wrapped to accept only what pickling writes:
no huge allocation, no codec but latin-1.
"""

from __future__ import annotations

import _codecs
import builtins
import collections
import io
import pickle
from typing import Any

from tensorhub.errors import SerializationError


class RefusedPickle(SerializationError):
    """A pickle names a global outside :data:`ALLOWED` (it was not imported, nor called)."""


def _no_size(kind: type) -> Any:
    def construct(*args: Any) -> Any:
        if args and isinstance(args[0], int):  # bytes(10**12): an allocation, never what pickle writes
            raise RefusedPickle(f"{kind.__name__}(<int>) in a pickle is refused")
        return kind(*args)
    return construct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise RefusedPickle(f"_codecs.encode with codec {encoding!r} in a pickle is refused (only latin-1)")
    return _codecs.encode(text, "latin1")


_BUILTINS: dict[str, Any] = {name: getattr(builtins, name) for name in (
    "list", "dict", "tuple", "set", "frozenset", "int", "float", "str", "complex", "bool")}
_BUILTINS.update(bytes=_no_size(bytes), bytearray=_no_size(bytearray))
_NUMPY_CORE = ("_reconstruct", "scalar")

#: (module, name) -> the object given to the pickle in its place (``None``: numpy's own, imported then)
ALLOWED: dict[tuple[str, str], Any] = {
    **{(module, name): value for module in ("builtins", "__builtin__") for name, value in _BUILTINS.items()},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): None,
    ("numpy", "dtype"): None,
    **{(module, name): None for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in _NUMPY_CORE},
    ("numpy.core.numeric", "_frombuffer"): None,
    ("numpy._core.numeric", "_frombuffer"): None,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` whose ``find_class`` resolves only :data:`ALLOWED` names."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``; :class:`RefusedPickle` for anything else."""
        if (module, name) not in ALLOWED:
            raise RefusedPickle(f"the pickle needs {module}.{name}, which is neither a numpy array/scalar nor a "
                                "Python container or scalar: refused (unpickling it could run code)")
        value = ALLOWED[(module, name)]
        if value is not None:
            return value
        if module.startswith("numpy.core"):  # numpy 2 renamed numpy.core to numpy._core
            try:
                return super().find_class("numpy._core" + module[len("numpy.core"):], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids refer to objects outside the pickle: refused."""
        raise RefusedPickle("the pickle refers to a persistent object: refused")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (Python 2 pickles too: latin-1 strings).

    Raises :class:`RefusedPickle` for a name outside :data:`ALLOWED`, and
    :class:`~tensorhub.errors.SerializationError` for a malformed pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedPickle:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a malformed pickle is the same fault
        raise SerializationError(f"not a readable pickle: {type(exc).__name__}: {exc}") from exc
