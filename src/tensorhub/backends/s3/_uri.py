"""``s3://`` URIs: parsing, option validation and redaction of secrets.

``s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1``. Credentials,
region and endpoint come from the standard AWS chain (environment, ``~/.aws``, instance
roles); the query parameters ``endpoint_url``, ``region``, ``profile``,
``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``,
``addressing_style`` (``path``/``virtual``), ``connect_timeout`` and ``read_timeout`` (seconds)
override it. Secrets are replaced by ``***`` in every ``uri`` attribute and message.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tensorhub.errors import ConfigurationError

_OPTIONS = ("endpoint_url", "region", "profile", "aws_access_key_id", "aws_secret_access_key",
            "aws_session_token", "addressing_style", "connect_timeout", "read_timeout")
_SECRET_OPTIONS = ("aws_secret_access_key", "aws_session_token")


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://`` URI: bucket, key prefix (``""`` or ending in ``/``) and options."""

    bucket: str
    prefix: str
    options: dict[str, str]
    uri: str  # redacted


def redact_uri(uri: str) -> str:
    """``uri`` with secret query parameters and any password replaced by ``***``."""
    parts = urlsplit(uri)
    pairs = [item.partition("=") for item in parts.query.split("&")] if parts.query else []
    query = "&".join(f"{k}{eq}***" if k in _SECRET_OPTIONS else f"{k}{eq}{v}" for k, eq, v in pairs)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[-1]}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def parse_uri(uri: str) -> S3Location:
    """Split ``s3://bucket/prefix?opt=value`` and validate its options."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.hostname:
        raise ConfigurationError(f"an S3 URI looks like s3://bucket/prefix, got {redact_uri(uri)!r}")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigurationError(f"unknown s3:// option(s) {unknown} in {redact_uri(uri)!r}; "
                                 f"known options: {', '.join(_OPTIONS)}")
    if parts.username and "aws_access_key_id" not in options:  # s3://KEY:SECRET@bucket/prefix
        options["aws_access_key_id"] = parts.username
        if parts.password:
            options["aws_secret_access_key"] = parts.password
    prefix = parts.path.strip("/")
    return S3Location(bucket=parts.hostname, prefix=f"{prefix}/" if prefix else "", options=options,
                      uri=redact_uri(uri))
