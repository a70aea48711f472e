"""mongomock's private API: several clients on one in-process server.

Private API used: ``mongomock.store.ServerStore`` (the data of one in-process "server") and
the ``_store=`` keyword of ``mongomock.MongoClient``, which makes a client use a given server
instead of a fresh one (mongomock's public API shares data only between clients of one
``host:port`` in one process, with no way to name or reset a store); and a collection's
``_store.documents`` (the stored documents themselves), which :func:`stored_documents` reads
instead of ``find({})``, whose copying costs ~0.8 ms a document (the ``mongomock://`` backend
reads a whole collection for every query: 8 s for 10,000 documents, under 0.1 s this way).

Checked against mongomock 4.1 to 4.3.0.

If ``_store.documents`` goes, :func:`stored_documents` falls back to ``find({})`` (slow, same answers).
If the rest changes: ``mongomock://name`` opens a new empty store on every ``TensorHub(...)`` (a hub
would no longer see what another hub of the same process saved), or opening fails with a
``TypeError``. ``test_item08_mongomock_private_store_api`` fails first.
"""

from __future__ import annotations

from typing import Any

Document = dict[str, Any]

import mongomock
import mongomock.store


def new_server() -> Any:
    """An empty in-process server that clients made by :func:`client_on` share."""
    return mongomock.store.ServerStore()


def client_on(server: Any, **kwargs: Any) -> mongomock.MongoClient:
    """A mongomock client whose databases live in ``server`` (``kwargs`` go to ``MongoClient``)."""
    return mongomock.MongoClient(_store=server, **kwargs)


def stored_documents(collection: Any) -> list[Document]:
    """The documents of a mongomock ``collection`` in insertion order, as stored: not copies (read
    them, never change them), with naive UTC datetimes (mongomock stores them so)."""
    store = getattr(collection, "_store", None)
    documents = getattr(store, "documents", None)
    if documents is None:
        return list(collection.find({}))
    return list(documents)
