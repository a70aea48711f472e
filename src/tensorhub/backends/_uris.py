"""Hiding the secrets of a store URI, for logs, error messages and ``str(hub)``.

Backends redact the URIs they report (``IndexStore.uri`` has no password), and so does the
registry above them; the function lives here so that backends need nothing from that layer.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_WORDS = ("secret", "password", "passwd", "token", "credential")


def redact(uri: str) -> str:
    """``uri`` with its password and secret query values replaced by ``***`` (for logs and ``str(hub)``)."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None and not any(w in parts.query.lower() for w in _SECRET_WORDS):
        return uri
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)
        userinfo = f"{parts.username}:***" if parts.username else ":***"
        parts = parts._replace(netloc=f"{userinfo}@{netloc[-1]}")
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        hidden = [(k, "***" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in pairs]
        parts = parts._replace(query=urlencode(hidden, safe="*:/"))
    return urlunsplit(parts)
