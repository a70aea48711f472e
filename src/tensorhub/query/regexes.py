"""``$regex``: compiling a pattern with its options, and searching under one time budget.

Regexes run with the ``regex`` package (PCRE-like, as MongoDB's) under a time limit, since a
pattern such as ``^(a+)+$`` can backtrack for minutes on one short string: every regex search of
one query evaluation (:func:`regex_budget`) draws on one allowance of :data:`REGEX_TIMEOUT_ENV`
CPU seconds (default :data:`DEFAULT_REGEX_TIMEOUT`), and :class:`~tensorhub.errors.QueryTimeoutError`
ends the query when it is spent. One allowance per query rather than per document: a per-document
bound either lets N documents take N times the bound or cuts long legitimate values short. A
search outside any evaluation gets the whole allowance.

As MongoDB does, a pattern or options holding a NUL character, an option letter other than
``i m s x u``, and flags given twice (a regex object with flags and ``$options`` beside it)
are refused with :class:`~tensorhub.errors.InvalidQueryError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import regex

from tensorhub.errors import ConfigurationError, InvalidQueryError, QueryTimeoutError
from tensorhub.query.values import REGEX_TYPES, regex_flags

#: seconds of regex matching one query evaluation may spend, all documents together
REGEX_TIMEOUT_ENV = "TENSORHUB_REGEX_TIMEOUT"
DEFAULT_REGEX_TIMEOUT = 5.0
_OPTION_FLAGS = {"i": regex.I, "m": regex.M, "s": regex.S, "x": regex.X, "u": 0}


def regex_time_limit() -> float:
    """The regex allowance of one query evaluation, in seconds (``$TENSORHUB_REGEX_TIMEOUT``)."""
    raw = os.environ.get(REGEX_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_REGEX_TIMEOUT
    try:
        limit = float(raw)
    except ValueError:
        limit = math.nan
    if not (limit > 0 and math.isfinite(limit)):
        raise ConfigurationError(f"${REGEX_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return limit


class Evaluation:
    """One query evaluation: what is left of its regex allowance, and the filters it has parsed.

    The allowance is in CPU seconds of the evaluating thread. Searches are timed with the cheap
    wall clock; only when that says the allowance is spent is the thread's CPU time read (a
    system call), which gives back the time a loaded machine kept the thread waiting. The
    ``regex`` package's ``timeout=`` counts CPU time as well. ``plans`` lets
    :func:`tensorhub.query.matches` parse a filter once per evaluation rather than per document.
    """

    __slots__ = ("limit", "left", "cpu_start", "plans")

    def __init__(self, limit: float) -> None:
        self.limit = self.left = limit
        self.cpu_start = time.thread_time()
        self.plans: dict[int, tuple[Any, Any]] = {}

    def recheck(self) -> bool:
        """Set ``left`` from the CPU time really spent since the start; whether some is left."""
        self.left = self.limit - (time.thread_time() - self.cpu_start)
        return self.left > 0


_current: contextvars.ContextVar[Evaluation | None] = contextvars.ContextVar("tensorhub_query_evaluation",
                                                                             default=None)
#: searches of one text after a timeout that CPU time shows was the machine's load, not the pattern's
_RETRIES = 3


def current_evaluation() -> Evaluation | None:
    """The evaluation :func:`regex_budget` opened in this context, if any."""
    return _current.get()


@contextlib.contextmanager
def regex_budget() -> Iterator[None]:
    """Make the regex searches inside one query evaluation share one allowance.

    A backend wraps its scan of a collection in this, so a filter over many documents is bounded
    as a whole, not per document. Nested uses share the outermost allowance. Inside it a filter
    is parsed once (keyed by the filter object): a filter must not change while its scan runs.
    """
    if _current.get() is not None:
        yield
        return
    token = _current.set(Evaluation(regex_time_limit()))
    try:
        yield
    finally:
        _current.reset(token)


def _too_slow(rx: regex.Pattern, limit: float) -> QueryTimeoutError:
    return QueryTimeoutError(
        f"$regex {rx.pattern!r} ran past this query's regex time limit of {limit:g} s (all documents "
        "together); the pattern probably backtracks catastrophically (nested quantifiers such as (a+)+): "
        f"simplify or anchor it, or raise ${REGEX_TIMEOUT_ENV} (seconds) if the query is really that large"
    )


def search(rx: regex.Pattern, text: str) -> bool:
    """``rx.search(text)`` within what is left of the current evaluation's regex allowance."""
    budget = _current.get() or Evaluation(regex_time_limit())
    for _ in range(_RETRIES):
        if budget.left <= 0 and not budget.recheck():
            break
        start = time.perf_counter()
        try:
            return rx.search(text, timeout=budget.left) is not None
        except TimeoutError:
            budget.left = 0.0  # recheck() says whether this was the pattern or the machine's load
        finally:
            budget.left -= time.perf_counter() - start
    raise _too_slow(rx, budget.limit)


@functools.lru_cache(maxsize=256)
def _compile(pattern: str, flags: int) -> regex.Pattern:
    try:
        return regex.compile(pattern, flags)
    except (regex.error, ValueError, OverflowError) as exc:
        raise InvalidQueryError(f"invalid $regex {pattern!r}: {exc}") from exc


def option_letters(options: Any) -> str:
    """``$options`` checked as MongoDB checks them: a string of the letters ``i m s x u``, no NUL."""
    if not isinstance(options, str):
        raise InvalidQueryError(f"$options must be a string such as 'i', got {options!r}")
    if "\0" in options:
        raise InvalidQueryError("$options cannot contain a NUL character")
    unknown = sorted(set(options) - set(_OPTION_FLAGS))
    if unknown:
        raise InvalidQueryError(f"invalid $options letter(s) {''.join(unknown)!r} in {options!r}; "
                                "MongoDB knows i, m, s, x and u")
    return options


def regex_of(pattern: Any, options: Any = None) -> regex.Pattern:
    """The compiled form of a ``$regex`` (a string, ``re.Pattern`` or ``bson.Regex``) and its ``$options``.

    ``options`` None means there is no ``$options``; a regex object's flags and non-empty
    ``$options`` together are refused, as MongoDB refuses them (\"options set in both $regex
    and $options\"), rather than one silently winning.
    """
    letters = "" if options is None else option_letters(options)
    if isinstance(pattern, REGEX_TYPES):
        own = regex_flags(pattern)
        if own and letters:
            raise InvalidQueryError(f"options set in both $regex ({own!r}) and $options ({letters!r}); "
                                    "give them in one place")
        letters = letters or own
        pattern = pattern.pattern
    if not isinstance(pattern, str):
        raise InvalidQueryError(f"invalid $regex {pattern!r}: it must be a string or a regex, not "
                                f"{type(pattern).__name__}")
    if "\0" in pattern:
        raise InvalidQueryError(f"invalid $regex {pattern!r}: a pattern cannot contain a NUL character")
    flags = 0
    for letter in letters:
        flags |= _OPTION_FLAGS[letter]
    return _compile(pattern, flags)


def regex_letters(pattern: Any, options: Any = None) -> str:
    """The sorted option letters a ``$regex`` (with its ``$options``) carries, for equality with a stored regex."""
    letters = options if isinstance(options, str) and options else (
        regex_flags(pattern) if isinstance(pattern, REGEX_TYPES) else "")
    return "".join(sorted(set(letters) - {"u"}))
