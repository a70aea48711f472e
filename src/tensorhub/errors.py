"""The tensorhub error hierarchy.

Every error the library raises on purpose is a :class:`TensorHubError`. Where a builtin
exception means the same thing, the class also inherits it, so ``except LookupError``
and ``except ValueError`` keep working for callers that do not know tensorhub.
Messages say what was wrong and what to do about it.
"""

from __future__ import annotations


class TensorHubError(Exception):
    """Base class of every error raised by tensorhub."""


class ConfigurationError(TensorHubError, ValueError):
    """A URI, an option or the environment is set up wrongly."""


class UnknownSchemeError(ConfigurationError):
    """A URI uses a scheme no backend is registered for."""


class BackendNotInstalledError(ConfigurationError, ImportError):
    """The backend for a scheme needs an optional dependency that is not installed."""


class BackendUnavailableError(TensorHubError, ConnectionError):
    """The server or endpoint behind a URI cannot be reached, or refused the credentials."""


class InvalidArgumentError(TensorHubError, TypeError):
    """An argument has the wrong type or value."""


class SerializationError(TensorHubError, TypeError):
    """A value cannot be stored safely (e.g. an arbitrary object without ``allow_pickle=True``)."""


class InvalidQueryError(TensorHubError, ValueError):
    """A query uses an operator or form tensorhub does not support."""


class QueryTimeoutError(InvalidQueryError):
    """A query's regexes ran past their time limit (``$TENSORHUB_REGEX_TIMEOUT``): the pattern
    backtracks catastrophically, or the query is larger than the limit allows."""


class NotFoundError(TensorHubError, LookupError):
    """A record or blob that was expected is missing."""


class CorruptDataError(TensorHubError, ValueError):
    """Stored bytes do not match what their record says (truncated or altered)."""


class ScriptError(TensorHubError, FileNotFoundError):
    """A task script is missing or unreadable."""


class TaskTimeoutError(TensorHubError, TimeoutError):
    """Waiting for tasks took longer than the given timeout."""


class UnsupportedOperationError(TensorHubError, NotImplementedError):
    """A backend was asked for an optional ability it does not declare (e.g. ``IndexStore.compact``)."""
