"""Mistakes speak: "did you mean" for misspelled options, query fields and record names.

The keyword arguments of tensorhub's ``find_*``/``delete_*`` calls are MongoDB queries and those
of its saves are tags (TensorLayer's API), so Python cannot tell a misspelled option from a
field. MongoDB's semantics stay (a query that matches nothing returns ``None``/``[]``/``0``); this
module adds, at no cost to a call that finds something:

* :func:`refuses_near_options`: a tag whose name is a near miss of one of the method's own
  parameters (``create_task(hyperparams=...)``) is refused with
  :class:`~tensorhub.errors.InvalidArgumentTypeError` (a ``TypeError``, as Python's "unexpected
  keyword argument"): it would be stored as a tag and the option silently left at its default;
* :func:`explains_empty`: when a ``find_*``/``delete_*`` finds nothing, a sample of the project's
  recent records (:data:`SAMPLE`, one cheap read, only then) tells the fields and names close to
  the ones asked, and the options close to a query key; one warning (logger ``tensorhub``) per
  call site (the caller's file and line) says them.

"Close" is :func:`difflib.get_close_matches` over names without case, ``_`` and ``-``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from tensorhub.errors import InvalidArgumentTypeError

log = logging.getLogger("tensorhub")

F = TypeVar("F", bound=Callable[..., Any])

#: how many of the project's newest records a query that found nothing is compared with
SAMPLE = 20
#: similarity (difflib's ratio, 0..1) from which a name is "close"
CUTOFF = 0.8
#: call sites (file, line) that already had their warning
_warned: set[tuple[str, int]] = set()


def _folded(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def close_to(word: str, candidates: Iterable[str], cutoff: float = CUTOFF) -> list[str]:
    """The candidates close to ``word`` (not ``word`` itself), closest first."""
    by_fold: dict[str, str] = {}
    for candidate in candidates:
        if isinstance(candidate, str) and candidate != word:
            by_fold.setdefault(_folded(candidate), candidate)
    return [by_fold[f] for f in difflib.get_close_matches(_folded(word), list(by_fold), n=3, cutoff=cutoff)]


def _parameters(func: Callable[..., Any]) -> tuple[list[str], str | None]:
    """The named parameters of ``func`` (without ``self``) and the name of its ``**`` parameter."""
    names, varkw = [], None
    for parameter in inspect.signature(func).parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            varkw = parameter.name
        elif parameter.kind is not parameter.VAR_POSITIONAL and parameter.name != "self":
            names.append(parameter.name)
    return names, varkw


def refuses_near_options(*extra: str) -> Callable[[F], F]:
    """Decorate a method whose ``**kwargs`` are tags: a tag named close to one of its parameters (or
    to the ``extra`` options it passes on) is refused before anything runs.

    A tag of exactly an option's name is the option; only near misses are refused, so a tag
    whose name is not close to any option still works.
    """

    def decorate(func: F) -> F:
        names, _ = _parameters(func)
        options = tuple(dict.fromkeys([*names, *extra]))
        method = func.__name__

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for key in kwargs:
                if key not in options:
                    _refuse_if_near(method, key, options)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@functools.lru_cache(maxsize=1024)
def _near_option(key: str, options: tuple[str, ...]) -> str | None:
    found = close_to(key, options)
    return found[0] if found else None


def _refuse_if_near(method: str, key: str, options: tuple[str, ...]) -> None:
    option = _near_option(key, options) if isinstance(key, str) else None
    if option is not None:
        raise InvalidArgumentTypeError(
            f"{method}() got {key}=, which is not one of its options but close to one: did you mean {option}=? "
            f"(its other keywords are stored as tags; a tag this close to an option is refused: rename it)")


def _is_empty(result: Any) -> bool:
    """Whether a call's result is "nothing": None, False, 0, [] (or an empty DataFrame); never reads an array."""
    kind = type(result)
    if result is None or kind in (list, int, bool):
        return not result
    return kind.__name__ == "DataFrame" and bool(getattr(result, "empty", False))


def explain(records: Any, kind: str, collection: str, query: Mapping[str, Any], name_field: str | None = None,
            options: Iterable[str] = ()) -> str | None:
    """Why ``query`` may have matched nothing, from a sample of the project's newest records; None if
    nothing looks wrong (the fields asked exist and no option is close to a query key).

    ``records`` is the hub's :class:`~tensorhub.records.Records`; ``kind`` names a record in the
    message; ``name_field`` (``dataset_name``...) gets its names compared too.
    """
    sample = records.find(collection, {}, limit=SAMPLE)
    fields = {key for record in sample for key in record}
    options = list(options)
    hints: list[str] = []
    for key in query:
        if not isinstance(key, str) or key.startswith("$"):
            continue
        top = key.split(".", 1)[0]
        near_fields = [] if top in fields else close_to(top, fields - set(query))
        near_options = close_to(key, options)
        both = [o for o in near_options if o in near_fields]  # wait_for_tasks(timout=): option and field
        near_fields = [f for f in near_fields if f not in both]
        if near_fields:
            hints.append(f"did you mean {' or '.join(map(repr, near_fields))} (not {top!r})?")
        elif sample and top not in fields and not both:
            hints.append(f"no recent {kind} has a field {top!r}")
        if both:
            hints.append(f"did you mean the option {both[0]}= (or the field {both[0]!r})?")
        elif near_options:
            hints.append(f"did you mean the option {near_options[0]}=?")
    name = query.get(name_field) if name_field else None
    if isinstance(name, str):
        names = {record.get(name_field) for record in sample}
        near_names = [] if name in names else close_to(name, [n for n in names if isinstance(n, str)])
        if near_names:
            hints.append(f"did you mean {' or '.join(f'{name_field}={n!r}' for n in near_names)}?")
    if not hints:
        return None
    shown = repr(dict(query))
    shown = shown if len(shown) <= 200 else shown[:197] + "..."
    return f"no {kind} matches {shown} in project {records.project_name!r}; {'; '.join(hints)}"


def explains_empty(records_of: Callable[[Any], Any], kind: str, collection: str, name_field: str | None = None,
                   options: Iterable[str] = ()) -> Callable[[F], F]:
    """Decorate a hub method whose ``**kwargs`` are a query: when it returns nothing, log one warning
    per call site naming the likely mistake (see :func:`explain`).

    ``records_of(self)`` is the :class:`~tensorhub.records.Records` of the object the method is
    called on. ``options`` are the keywords the method takes out of ``**kwargs`` (not query fields); the
    method's own parameters are options too. A call that returns something costs nothing more; one
    that returns nothing reads :data:`SAMPLE` records, unless its call site already warned. A call
    from the hub's own module (``find_dataset`` calling ``find_all_datasets``) leaves the warning to
    the outer call.
    """

    def decorate(func: F) -> F:
        names, varkw = _parameters(func)
        popped = set(options)
        all_options = [n for n in names if n != name_field] + sorted(popped)
        module = func.__module__

        @functools.wraps(func)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = func(self, *args, **kwargs)
            if not _is_empty(result):
                return result
            caller = sys._getframe(1)
            site = (caller.f_code.co_filename, caller.f_lineno)
            if caller.f_globals.get("__name__") == module or site in _warned:
                return result
            try:
                arguments = inspect.signature(func).bind(self, *args, **kwargs).arguments
                query = {k: v for k, v in arguments.get(varkw, {}).items() if k not in popped} if varkw else {}
                if name_field in arguments and arguments[name_field] is not None:
                    query[name_field] = arguments[name_field]
                message = explain(records_of(self), kind, collection, query, name_field, all_options) if query else None
            except Exception:  # noqa: BLE001 - a hint must never break the call it explains
                log.debug("no hint for %s", func.__name__, exc_info=True)
                return result
            if message:
                _warned.add(site)
                log.warning("%s (%s:%d)", message, *site)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
