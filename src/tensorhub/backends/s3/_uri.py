"""``s3://`` URIs: parsing, option validation and redaction of secrets.

``s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1``. Credentials,
region and endpoint come from the standard AWS chain (environment, ``~/.aws``, instance
roles); the query parameters ``endpoint_url``, ``region``, ``profile``,
``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``,
``addressing_style`` (``path``/``virtual``), ``connect_timeout`` and ``read_timeout`` (seconds)
override it. Secrets are replaced by ``***`` in every ``uri`` attribute and message
(:mod:`tensorhub.redaction`; option names in any case or percent-encoded count).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from tensorhub.errors import ConfigurationError
from tensorhub.redaction import redact_uri, scrub  # the one redaction function, re-exported here

_OPTIONS = ("endpoint_url", "region", "profile", "aws_access_key_id", "aws_secret_access_key",
            "aws_session_token", "addressing_style", "connect_timeout", "read_timeout")


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://`` URI: bucket, key prefix (``""`` or ending in ``/``) and options."""

    bucket: str
    prefix: str
    options: dict[str, str]
    uri: str  # redacted


def parse_uri(uri: str) -> S3Location:
    """Split ``s3://bucket/prefix?opt=value`` and validate its options."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.hostname:
        raise ConfigurationError(f"an S3 URI looks like s3://bucket/prefix, got {redact_uri(uri)!r}")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        # an option name may be a secret pasted in the wrong place (``?SECRET``): scrubbed
        raise ConfigurationError(scrub(f"unknown s3:// option(s) {unknown} in {redact_uri(uri)!r}; "
                                       f"known options (lower case): {', '.join(_OPTIONS)}", uri))
    if parts.username and "aws_access_key_id" not in options:  # s3://KEY:SECRET@bucket/prefix
        options["aws_access_key_id"] = parts.username
        if parts.password:
            options["aws_secret_access_key"] = parts.password
    prefix = parts.path.strip("/")
    return S3Location(bucket=parts.hostname, prefix=f"{prefix}/" if prefix else "", options=options,
                      uri=redact_uri(uri))
