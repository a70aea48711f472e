"""Secrets in store URIs: the ONE place that decides what of a URI may be shown.

Every string that shows a URI (``str(hub)``, a store's ``uri``, ``repr`` of a
:class:`~tensorhub.context.Connection`, error messages, log records, CLI output) goes through
:func:`redact_uri`; every error raised while a URI is opened goes through :func:`scrub`.

The URI is split by parsing, with the rules of the code that consumes it, never by searching
for words in the whole string:

* ``mongodb://`` and ``mongodb+srv://`` follow pymongo's parser: the options start at the first
  ``?``, the hosts end at the first ``/``, the user info ends at the last ``@`` before that (so
  a raw ``#`` belongs to the password, as pymongo accepts it); option names are case-insensitive.
* every other scheme follows RFC 3986 (:mod:`urllib.parse`): the authority ends at ``/``, ``?`` or
  ``#``.
* a password that contains an unescaped delimiter (``/``, ``?``, ``#``) is not a valid URI, but
  its owner still meant it as a secret: when the authority holds a ``:`` that is not a port and an
  ``@`` comes later, everything up to that ``@`` is taken as user info.
* option names are compared percent-decoded and lower-cased (``AWS_SECRET_ACCESS_KEY``,
  ``aws%5Fsecret%5Faccess%5Fkey``); a value is hidden when the name is a known secret or names a
  password, token, secret, credential or signature; ``authMechanismProperties`` keeps only the
  values of its known public properties; an option without ``=`` is hidden whole.

Then, as a second line of defence, every secret value any of these parsers (and pymongo's own
helpers, and :func:`urllib.parse.urlsplit`) finds is replaced wherever it still occurs.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus, urlsplit

HIDDEN = "***"

#: option names (lower case) whose value is a secret
_SECRET_OPTIONS = frozenset({
    "password", "tlscertificatekeyfilepassword", "sslpemkeypassword", "sslclientcertificatekeypassword",
    "aws_secret_access_key", "aws_session_token", "x-amz-security-token", "x-amz-signature", "x-amz-credential",
})
#: an option whose (lower-case) name contains one of these is taken as a secret too
_SECRET_WORDS = ("secret", "password", "passwd", "pwd", "token", "credential", "signature")
_MECHANISM_PROPERTIES = "authmechanismproperties"
#: authMechanismProperties whose values are not secrets; any other property's value is hidden
_PUBLIC_PROPERTIES = frozenset({"SERVICE_NAME", "CANONICALIZE_HOST_NAME", "SERVICE_REALM", "SERVICE_HOST",
                                "ENVIRONMENT", "TOKEN_RESOURCE", "ALLOWED_HOSTS"})
_MONGODB_SCHEMES = ("mongodb", "mongodb+srv")
#: secrets shorter than this are hidden in URIs but not searched for in free text (that would
#: garble messages while protecting nothing)
_MIN_SCRUB = 4
#: one host of a host list: ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``
_HOST = re.compile(r"(\[[^\]]*\]|[^\[\]:,@]*)(:\d*)?")


def _is_secret_option(name: str) -> bool:
    name = unquote_plus(name).strip().lower()
    return name in _SECRET_OPTIONS or any(word in name for word in _SECRET_WORDS)


def _looks_like_hosts(authority: str) -> bool:
    return all(_HOST.fullmatch(host) for host in authority.split(","))


def _userinfo_end(rest: str, mongodb: bool) -> int:
    """Index of the ``@`` that ends the user info of ``rest`` (the URI after ``://``), or -1."""
    delimiters = "/?" if mongodb else "/?#"
    end = next((i for i, c in enumerate(rest) if c in delimiters), len(rest))
    authority = rest[:end]
    if "@" in authority:
        return authority.rindex("@")
    if ":" not in authority:
        return -1
    # ``user:pa/ss@host``: a password with an unescaped delimiter; ``host:27017/db?appName=a@b`` is not
    hosts = _looks_like_hosts(authority)
    at = rest.rfind("@")
    while at > end:
        if not hosts or "=" not in rest[end:at]:
            return at
        at = rest.rfind("@", end, at)
    return -1


def _redact_properties(value: str) -> str:
    if "%" in value:  # encoded delimiters could hide the structure: hide it all
        return HIDDEN
    shown = []
    for prop in value.split(","):
        name, colon, prop_value = prop.partition(":")
        shown.append(f"{name}{colon}{prop_value if name.strip().upper() in _PUBLIC_PROPERTIES else HIDDEN}"
                     if colon else HIDDEN)
    return ",".join(shown)


def _secret_properties(value: str) -> list[str]:
    """The values of the non-public properties of an ``authMechanismProperties`` value."""
    return [v or name for name, _, v in (p.partition(":") for p in value.split(","))
            if name.strip().upper() not in _PUBLIC_PROPERTIES]


def _redact_options(options: str) -> str:
    """``key=value&...`` (``&`` or ``;``) with the values of secret options hidden."""
    items = re.split(r"([&;])", options)
    for i in range(0, len(items), 2):
        key, eq, value = items[i].partition("=")
        if not eq:
            items[i] = HIDDEN if key else ""
        elif _is_secret_option(key):
            items[i] = f"{key}={HIDDEN}"
        elif unquote_plus(key).strip().lower() == _MECHANISM_PROPERTIES:
            items[i] = f"{key}={_redact_properties(value)}"
    return "".join(items)


def _split(uri: str) -> tuple[str, str | None, str, str | None, str | None] | None:
    """``(scheme, userinfo, hosts-and-path, options, fragment)`` of ``uri`` (None where absent);
    None for a bare path."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return None
    mongodb = scheme.lower() in _MONGODB_SCHEMES
    at = _userinfo_end(rest, mongodb)
    userinfo, after = (rest[:at], rest[at + 1:]) if at >= 0 else (None, rest)
    if mongodb:  # pymongo has no fragment: everything after the first "?" is options
        head, q, options = after.partition("?")
        return scheme, userinfo, head, options if q else None, None
    before, h, fragment = after.partition("#")
    head, q, options = before.partition("?")
    return scheme, userinfo, head, options if q else None, fragment if h else None


def _secrets(uri: str) -> set[str]:
    """Every secret value of ``uri``, as written and decoded, found by any parser that reads it."""
    found: set[str] = set()
    parts = _split(uri)
    if parts is None:
        return found
    scheme, userinfo, _head, options, _fragment = parts
    if userinfo is not None and ":" in userinfo:
        found.add(userinfo.partition(":")[2])
    for item in re.split(r"[&;]", options or ""):
        key, eq, value = item.partition("=")
        if not eq:
            found.add(key)
        elif _is_secret_option(key):
            found.add(value)
        elif unquote_plus(key).strip().lower() == _MECHANISM_PROPERTIES:
            found.update(_secret_properties(value))
    try:  # what urllib-based readers (the s3:// backend) take as the password
        found.add(urlsplit(uri).password or "")
    except ValueError:
        pass
    if scheme.lower() in _MONGODB_SCHEMES:
        found |= _pymongo_secrets(uri)
    return {form for value in found for form in (value, unquote(value), unquote_plus(value)) if form}


def _pymongo_secrets(uri: str) -> set[str]:
    """The password and secret options as pymongo's own (non-resolving) helpers read them."""
    try:
        from pymongo.uri_parser import parse_userinfo, split_options
    except ImportError:  # pragma: no cover - pymongo is a dependency
        return set()
    found: set[str] = set()
    rest = uri.partition("://")[2]
    hosts_and_db, _, options = rest.partition("?")
    hosts = hosts_and_db.partition("/")[0]
    try:
        if "@" in hosts:
            found.add(parse_userinfo(hosts.rpartition("@")[0])[1])
    except Exception:  # noqa: BLE001 - malformed user info: the structural split covers it
        pass
    try:
        parsed = split_options(options, validate=False, warn=False, normalize=False) if options else {}
    except Exception:  # noqa: BLE001 - malformed options: the structural split covers them
        parsed = {}
    for key, value in parsed.items():
        if _is_secret_option(key):
            found.add(str(value))
        elif key.lower() == _MECHANISM_PROPERTIES:
            found.update(_secret_properties(str(value)))
    return found


def scrub(text: str, *uris: str | None) -> str:
    """``text`` with every secret of ``uris`` (passwords, secret options) replaced by ``***``.

    For messages that may quote a URI or a value taken from it (a driver's exception).
    """
    secrets = set().union(*(_secrets(u) for u in uris if isinstance(u, str)))
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SCRUB:
            text = text.replace(secret, HIDDEN)
    return text


def redact_uri(uri: str) -> str:
    """``uri`` as it may be shown: its password and secret option values replaced by ``***``.

    ``redact_uri("mongodb://me:pa#ss@host/db?authMechanismProperties=AWS_SESSION_TOKEN:t")``
    is ``"mongodb://me:***@host/db?authMechanismProperties=AWS_SESSION_TOKEN:***"``.
    """
    if not isinstance(uri, str):
        return f"<{type(uri).__name__}>"
    parts = _split(uri)
    if parts is None:  # a bare path has no secrets
        return uri
    scheme, userinfo, head, options, fragment = parts
    shown = f"{scheme}://"
    if userinfo is not None:
        user, colon, _password = userinfo.partition(":")
        shown += f"{user}:{HIDDEN}@" if colon else f"{user}@"
    shown += head
    if options is not None:
        shown += "?" + _redact_options(options)
    if fragment is not None:
        shown += "#" + fragment
    return scrub(shown, uri)


def shows_secret(text: str, uri: str) -> bool:
    """Whether ``text`` contains a secret of ``uri`` (long enough to search for)."""
    return scrub(text, uri) != text
