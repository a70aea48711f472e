"""The tensorhub error hierarchy: one taxonomy for every layer and every backend.

Every error the library raises on purpose is a :class:`TensorHubError`. Where a builtin
exception means the same thing, the class also inherits it, so ``except LookupError`` and
``except ValueError`` keep working for callers that do not know tensorhub. Messages say what
was wrong and what to do about it. Each backend translates its driver's errors (pymongo,
botocore, sqlite3, OSError) into these classes in one place (``translate_errors``), so the same
fault raises the same class on every backend; the contract suite
(:mod:`tensorhub.testing`) pins the classes.

=============================  =================================  ====================================================
class                          builtin it also is                 raised when
=============================  =================================  ====================================================
``TensorHubError``             ``Exception``                      (base of all; never raised itself)
**arguments**
``InvalidArgumentError``       ``ValueError``                     an argument has a wrong value (``lease=-1``, an empty
                                                                  name, rows that do not fit a dataset)
``InvalidArgumentTypeError``   ``TypeError`` (and, through        an argument has a wrong type (``find_dataset(3)``,
                               its base, ``ValueError``)          ``limit="10"``, a log row that is no dict)
``InvalidQueryError``          ``ValueError``                     a filter, sort or update uses a form or operator
                                                                  tensorhub does not support
``QueryTimeoutError``          ``ValueError``                     a query's ``$regex`` ran past its time allowance
                                                                  (``$TENSORHUB_REGEX_TIMEOUT``)
``SerializationError``         ``TypeError``                      a value cannot be stored (or loaded) safely: an
                                                                  object without ``allow_pickle=True``, no adapter
**configuration**
``ConfigurationError``         ``ValueError``                     a URI, an option or the environment is wrong (a
                                                                  MongoDB database name breaking MongoDB's rule, a
                                                                  missing bucket, a blob store owned by another index)
``UnknownSchemeError``         ``ValueError``                     a URI's scheme has no registered backend
``BackendNotInstalledError``   ``ImportError``, ``ValueError``    the backend needs an optional dependency
**the store**
``BackendUnavailableError``    ``ConnectionError``                the server or endpoint cannot be reached, refused the
                                                                  credentials, or the store is closed
``NotFoundError``              ``LookupError``                    a record or blob that was expected is missing; a
                                                                  store opened with ``create=False`` does not exist
``CorruptDataError``           ``ValueError``                     stored bytes or records do not match what they say
``ConflictError``              --                                 concurrent writers won every retry of an optimistic
                                                                  update (``append_dataset``, an S3 compare-and-swap):
                                                                  nothing was changed, try again
``DuplicateKeyError``          --                                 a record with the same ``_id`` already exists (a
                                                                  conflict that no retry resolves)
``UnsupportedOperationError``  ``NotImplementedError``            a backend lacks a declared optional ability
**tasks**
``ScriptError``                --                                 (base of the task script errors)
``ScriptNotFoundError``        ``FileNotFoundError``              a task script is missing or unreadable
``ScriptSyntaxError``          ``ValueError``                     a task script does not compile
``TaskTimeoutError``           ``TimeoutError``                   waiting for tasks took longer than ``timeout``
``NoActiveRunError``           ``RuntimeError``                   ``hub.log`` outside any run (task or interactive), or
                                                                  ``run.log`` after the run ended
=============================  =================================  ====================================================

``InvalidArgumentTypeError`` is an ``InvalidArgumentError``, so ``except InvalidArgumentError``
catches every bad argument; a wrong type is therefore also a ``ValueError``, as many Python
callers write ``except (TypeError, ValueError)`` anyway.
"""

from __future__ import annotations


class TensorHubError(Exception):
    """Base class of every error raised by tensorhub."""


# ------------------------------------------------------------------ arguments
class InvalidArgumentError(TensorHubError, ValueError):
    """An argument has a wrong value (and, through :class:`InvalidArgumentTypeError`, a wrong type)."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (e.g. a number where a name is expected)."""


class InvalidQueryError(TensorHubError, ValueError):
    """A query uses an operator or form tensorhub does not support."""


class SerializationError(TensorHubError, TypeError):
    """A value cannot be stored safely (e.g. an arbitrary object without ``allow_pickle=True``)."""


# ------------------------------------------------------------------ configuration
class ConfigurationError(TensorHubError, ValueError):
    """A URI, an option or the environment is set up wrongly."""


class UnknownSchemeError(ConfigurationError):
    """A URI uses a scheme no backend is registered for."""


class BackendNotInstalledError(ConfigurationError, ImportError):
    """The backend for a scheme needs an optional dependency that is not installed."""


# ------------------------------------------------------------------ the store
class BackendUnavailableError(TensorHubError, ConnectionError):
    """The server or endpoint behind a URI cannot be reached, or refused the credentials."""


class QueryTimeoutError(InvalidQueryError):
    """A query's regexes ran past their time limit (``$TENSORHUB_REGEX_TIMEOUT``): the pattern
    backtracks catastrophically, or the query is larger than the limit allows."""


class NotFoundError(TensorHubError, LookupError):
    """A record or blob that was expected is missing."""


class CorruptDataError(TensorHubError, ValueError):
    """Stored bytes do not match what their record says (truncated or altered)."""


class ConflictError(TensorHubError):
    """Concurrent writers changed what an update depends on, every time it was retried; nothing changed."""


class DuplicateKeyError(ConflictError):
    """A record with this ``_id`` already exists in the collection."""


class UnsupportedOperationError(TensorHubError, NotImplementedError):
    """A backend was asked for an optional ability it does not declare (e.g. ``IndexStore.compact``)."""


# ------------------------------------------------------------------ tasks
class ScriptError(TensorHubError):
    """A task script cannot be used: base of :class:`ScriptNotFoundError` and :class:`ScriptSyntaxError`."""


class ScriptNotFoundError(ScriptError, FileNotFoundError):
    """A task script is missing or unreadable."""


class ScriptSyntaxError(ScriptError, ValueError):
    """A task script has a syntax error (it does not compile)."""


class TaskTimeoutError(TensorHubError, TimeoutError):
    """Waiting for tasks took longer than the given timeout."""


class NoActiveRunError(TensorHubError, RuntimeError):
    """A logging call needs a run: ``hub.log`` outside a task or interactive run, ``run.log`` after its end."""
