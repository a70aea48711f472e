"""URI scheme -> backend registry.

A backend is a function ``open_stores(uri, *, index, blobs) -> Stores`` named by a lazy
dotted path, so that choosing ``file://`` never imports boto3 and a missing optional
dependency is reported with the pip extra that installs it. Third-party packages add
schemes with :func:`register_backend` or the ``tensorhub.backends`` entry-point group
(name = scheme, value = ``"package.module:open_stores"``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from tensorhub.backends.base import BlobStore, IndexStore, Stores
from tensorhub.errors import (
    BackendNotInstalledError,
    ConfigurationError,
    NotFoundError,
    TensorHubError,
    UnknownSchemeError,
)
from tensorhub.redaction import redact_uri, scrub, shows_secret

#: the one redaction function (:func:`tensorhub.redaction.redact_uri`), under its older name
redact = redact_uri

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tensorhub.backends"
DEFAULT_URI = "file://./tensorhub-data"

# Stores and redact live below the backends (backends depend on nothing above them); they
# stay importable from here
__all__ = ["DEFAULT_URI", "ENTRY_POINT_GROUP", "Opener", "Stores", "known_schemes", "normalize_scheme",
           "open_stores", "redact", "register_backend", "split_scheme"]


Opener = Callable[..., Stores]


@dataclass(frozen=True)
class _Entry:
    target: str | Opener
    extra: str | None = None  # pip extra that provides the dependencies


_BUILTIN: dict[str, _Entry] = {
    "file": _Entry("tensorhub.backends.file:open_stores"),
    "mongodb": _Entry("tensorhub.backends.mongo:open_stores", "mongo"),
    "mongomock": _Entry("tensorhub.backends.mongomock:open_stores", "mongomock"),
    "s3": _Entry("tensorhub.backends.s3:open_stores", "s3"),
}
# fsspec filesystems as blob stores (backends/fsspec.py); s3:// stays on boto3 above. The extra is
# the one that installs the implementation (gcsfs, adlfs); fsspec+PROTOCOL:// reaches the others
_FSSPEC = "tensorhub.backends.fsspec:open_stores"
_FSSPEC_PREFIX = "fsspec+"
_BUILTIN.update({scheme: _Entry(_FSSPEC, extra) for scheme, extra in (
    ("memory", "fsspec"), ("gs", "gcs"), ("gcs", "gcs"), ("az", "azure"), ("abfs", "azure"),
    ("sftp", "fsspec"), ("ssh", "fsspec"), ("hdfs", "fsspec"), ("webhdfs", "fsspec"))})
_ALIASES = {"mongodb+srv": "mongodb"}
_registered: dict[str, _Entry] = {}


def register_backend(scheme: str, opener: str | Opener, extra: str | None = None) -> None:
    """Make ``scheme://`` URIs open with ``opener`` (a callable or ``"module:function"``).

    Example::

        register_backend("memcache", "my_pkg.hub_backend:open_stores")
    """
    _registered[scheme.lower()] = _Entry(opener, extra)


def normalize_scheme(scheme: str) -> str:
    """Lower-case a scheme and fold aliases (``mongodb+srv`` is served by the ``mongodb`` backend)."""
    scheme = scheme.lower()
    return _ALIASES.get(scheme, scheme)


def _entry_point_backends() -> dict[str, _Entry]:
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name.lower()] = _Entry(ep.value)
    return found


def known_schemes() -> list[str]:
    """Every scheme that can be opened now (built-in, registered, from entry points, aliases)."""
    return sorted({*_BUILTIN, *_registered, *_entry_point_backends(), *_ALIASES})


def _lookup(scheme: str) -> _Entry:
    for table in (_registered, _BUILTIN):
        if scheme in table:
            return table[scheme]
    plugins = _entry_point_backends()
    if scheme in plugins:
        return plugins[scheme]
    if scheme.startswith(_FSSPEC_PREFIX) and len(scheme) > len(_FSSPEC_PREFIX):  # any fsspec protocol, as blobs
        return _Entry(_FSSPEC, "fsspec")
    raise UnknownSchemeError(
        f"no tensorhub backend for URI scheme {scheme!r}; known schemes: {', '.join(known_schemes())}, "
        f"and {_FSSPEC_PREFIX}PROTOCOL:// for another fsspec filesystem as blobs. "
        "Third-party backends register with tensorhub.register_backend() or the "
        f"{ENTRY_POINT_GROUP!r} entry-point group."
    )


def _load(entry: _Entry, scheme: str) -> Opener:
    if callable(entry.target):
        return entry.target
    module_name, _, attr = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'tensorhub[{entry.extra}]'" if entry.extra else "check the backend's installation"
        raise BackendNotInstalledError(
            f"the {scheme}:// backend needs a package that is not installed ({exc.name or exc}); {hint}"
        ) from exc
    return getattr(module, attr)


def split_scheme(uri: str) -> str:
    """The normalised scheme of ``uri``; a bare path means ``file``."""
    if "://" not in uri:
        return "file"
    return normalize_scheme(uri.split("://", 1)[0])


def open_stores(uri: str, *, index: bool = True, blobs: bool = True, create: bool = True) -> Stores:
    """Open the stores a URI names; only the layers asked for are opened.

    Opening creates nothing (a backend creates a store on its first write). With ``create=False``
    (read-only commands: ``tensorhub ls``, a ``copy`` source) a store that does not exist yet is
    an error rather than an empty store: :class:`~tensorhub.errors.NotFoundError` naming the
    (redacted) URI. What "exists" means is the backend's (:meth:`IndexStore.store_exists`; the
    index decides when one was opened, else the blob store).
    """
    if not isinstance(uri, str) or not uri:
        got = "an empty string" if isinstance(uri, str) else f"a {type(uri).__name__}"  # never echo it: secrets
        raise ConfigurationError(f"a store URI must be a non-empty string such as {DEFAULT_URI!r}, got {got}")
    scheme = split_scheme(uri)
    opener = _load(_lookup(scheme), scheme)
    log.debug("opening %s (index=%s, blobs=%s)", redact_uri(uri), index, blobs)
    try:
        stores = opener(uri, index=index, blobs=blobs)
        if not create:
            _require_existing(stores, uri)
        return stores
    except Exception as exc:
        # last line of defence for every backend (third-party ones too): an error that quotes a
        # secret of the URI, itself or in its chain, is raised again without it
        if not _chain_shows_secret(exc, uri):
            raise
        raise _scrubbed(exc, uri) from None


def _require_existing(stores: Stores, uri: str) -> None:
    """Raise :class:`NotFoundError` (closing the stores) when the store ``uri`` names was never created."""
    store: IndexStore | BlobStore | None = stores.index if stores.index is not None else stores.blobs
    if store is None or store.store_exists():
        return
    for opened in (stores.index, stores.blobs):
        if opened is not None:
            opened.close()
    raise NotFoundError(
        f"there is no tensorhub store at {redact_uri(uri)}: nothing was ever saved there (a typo in the path?). "
        "Check the URI; a store is created by its first write (save_*, create_task), never by a read")


def _chain_shows_secret(exc: BaseException, uri: str) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 50:
        seen.add(id(current))
        if shows_secret(str(current), uri):
            return True
        current = current.__cause__ or current.__context__
    return False


def _scrubbed(exc: Exception, uri: str) -> Exception:
    """``exc`` again, its message without the secrets of ``uri`` (a ConfigurationError if it cannot be rebuilt)."""
    message = scrub(str(exc), uri)
    if isinstance(exc, TensorHubError):
        try:
            return type(exc)(message)
        except Exception:  # noqa: BLE001 - a subclass with another constructor
            pass
    return ConfigurationError(f"could not open {redact_uri(uri)}: {type(exc).__name__}: {message}")
