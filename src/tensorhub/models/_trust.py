"""What a model load may resolve by name: the ``trusted=`` option and safe class lookup.

A shared store is hostile input, so a name read from a record (a class path, a skops type)
must not import or call anything the loading process did not choose itself. By default a
class path resolves only in modules this process has already imported, and only to a class
of the expected base (``torch.nn.Module``); ``trusted=True`` also imports modules the record
names, and ``trusted=["mypkg.models", ...]`` does so for those module prefixes only.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterable
from typing import Any, Union

from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError, SerializationError

#: ``trusted=`` once checked: False (nothing beyond the defaults), True (everything), or module prefixes
Trust = Union[bool, tuple[str, ...]]

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_MISSING = object()


def check_trusted(trusted: Any) -> Trust:
    """``trusted=`` as given by a caller, checked: None/False, True, or module prefixes (a str or an iterable).

    A prefix trusts that module and the modules below it: ``"mypkg"`` trusts ``mypkg`` and
    ``mypkg.models``, not ``mypkgevil``.
    """
    if trusted is None or trusted is False:
        return False
    if trusted is True:
        return True
    prefixes = [trusted] if isinstance(trusted, str) else trusted
    if isinstance(prefixes, Iterable) and not isinstance(prefixes, (bytes, dict)):
        prefixes = tuple(prefixes)
        if all(isinstance(p, str) and _DOTTED.match(p) for p in prefixes):
            return prefixes
    error = InvalidArgumentError if isinstance(prefixes, tuple) and all(isinstance(p, str) for p in prefixes) \
        else InvalidArgumentTypeError
    raise error(
        f"trusted= must be True or a list of module prefixes such as ['mypkg.models'], got {trusted!r}")


def is_trusted(name: str, trust: Trust) -> bool:
    """Whether the dotted ``name`` (a module, or ``module.Type``) falls under ``trust``."""
    if trust is True:
        return True
    return any(name == p or name.startswith(p + ".") for p in trust or ())


def resolve_class(path: str, base: type, base_name: str, trust: Trust, what: str) -> type:
    """The class a record's ``module:qualname`` path names, if it may be used; else a clear error.

    It must be a subclass of ``base``, found in a module this process has already imported,
    or one ``trust`` covers (then imported). Attributes are read statically, so no module
    ``__getattr__`` or descriptor runs on the way.
    """
    module_name, _, qualname = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not (_DOTTED.match(module_name) and _DOTTED.match(qualname)):
        raise SerializationError(f"{what}: the stored class path {path!r} is not a 'module:Class' name; "
                                 f"pass into=<a built {base_name}> to load the parameters only")
    module = sys.modules.get(module_name)
    if module is None:
        if not is_trusted(module_name, trust):
            raise SerializationError(
                f"{what}: its class {path!r} lives in module {module_name!r}, which this process has not imported; "
                "tensorhub does not import modules named by a record unless you trust it. Import the module "
                f"yourself first, pass trusted=True or trusted=[{module_name.split('.')[0]!r}] to find_model if "
                "you trust whoever saved it, pass into=<a built module> to load the parameters only, or save with "
                "example_inputs=... to store an exported program that needs no class")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SerializationError(
                f"{what}: cannot import the model class {path!r} in this process ({exc}). Make the module importable "
                "(install or add it to PYTHONPATH), pass into=<an instance> to load only the parameters, or save "
                "with example_inputs=... to store an exported program that needs no class") from exc
    obj: Any = module
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part, _MISSING)
        if obj is _MISSING:
            raise SerializationError(f"{what}: module {module_name!r} has no class {qualname!r}; pass into=<a built "
                                     "module> to load the parameters only, or save with example_inputs=...")
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise SerializationError(
            f"{what}: the stored class path {path!r} names a {type(obj).__qualname__}, not a {base_name} "
            "subclass; tensorhub refuses to call it (the store may be hostile). Pass "
            "into=<a built module> to load the parameters only; trusted= does not change this")
    return obj
