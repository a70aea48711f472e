"""botocore/boto3 errors: classified here, and translated into tensorhub errors here only.

:func:`translate_errors` is the one place where a botocore error becomes a
:class:`~tensorhub.errors.TensorHubError` that says what to do; :func:`is_conflict` and
:func:`is_missing` let the conditional-write and read paths recognise the two outcomes they
handle themselves (a lost CAS race, an absent object) before anything is translated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import boto3.exceptions
import botocore.exceptions

from tensorhub.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
)

_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken",
                 "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled"}


def error_code(exc: botocore.exceptions.ClientError) -> str:
    """The S3 error code of a client error (``"NoSuchKey"``, ``"412"``...), ``""`` if none."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: botocore.exceptions.ClientError) -> int:
    """The HTTP status of a client error, 0 if unknown."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_conflict(exc: BaseException) -> bool:
    """Whether a conditional write lost a race (412/409, or 404 for ``IfMatch`` on a removed key)."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    return error_code(exc) in _CONFLICT_CODES or http_status(exc) in (409, 412)


def is_missing(exc: BaseException) -> bool:
    """Whether a request failed because the object does not exist."""
    return isinstance(exc, botocore.exceptions.ClientError) and (
        error_code(exc) in _MISSING_CODES or http_status(exc) == 404)


@contextmanager
def translate_errors(where: str, key: str | None = None) -> Iterator[None]:
    """Turn botocore/boto3 errors into tensorhub errors that say what to do."""
    try:
        yield
    except boto3.exceptions.S3UploadFailedError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)):
            with translate_errors(where, key):
                raise cause from exc
        raise BackendUnavailableError(f"upload of {key!r} to {where} failed: {exc}") from exc
    except botocore.exceptions.ClientError as exc:
        code, status = error_code(exc), http_status(exc)
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        if code == "NoSuchBucket":
            raise ConfigurationError(f"the bucket of {where} does not exist: create it "
                                     "(e.g. `aws s3 mb s3://BUCKET`) or fix the URI") from exc
        if key is not None and (code in _MISSING_CODES or status == 404):
            raise NotFoundError(f"{key!r} is missing from {where}") from exc
        if code in _DENIED_CODES or status in (401, 403):
            raise BackendUnavailableError(
                f"S3 at {where} refused the request ({code}: {message}). Check the credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ?profile=, ?aws_access_key_id=) and that they "
                "may read, write, list and delete under the prefix.") from exc
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301", "IllegalLocationConstraintException"):
            raise ConfigurationError(f"the bucket of {where} is in another region ({code}: {message}); "
                                     "pass ?region=THE_BUCKET_REGION") from exc
        if is_conflict(exc):
            raise ConflictError(f"S3 at {where}: a concurrent writer changed {key or 'an object'} "
                                f"({code}); try again") from exc
        raise BackendUnavailableError(f"S3 at {where} failed ({code or status}: {message})") from exc
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError) as exc:
        raise ConfigurationError(
            f"no usable AWS credentials for {where} ({exc}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, configure a profile (?profile=NAME) or pass "
            "?aws_access_key_id=...&aws_secret_access_key=... in the URI") from exc
    except (botocore.exceptions.ProfileNotFound, botocore.exceptions.NoRegionError,
            botocore.exceptions.InvalidConfigError) as exc:
        raise ConfigurationError(f"the AWS configuration for {where} is invalid: {exc}") from exc
    except botocore.exceptions.ParamValidationError as exc:
        raise InvalidArgumentError(f"invalid S3 request for {where}: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:  # connection refused, timeouts, broken streams
        raise BackendUnavailableError(
            f"the S3 endpoint of {where} is unreachable ({exc.__class__.__name__}: {str(exc)[:200]}). "
            "Check that it runs, the ?endpoint_url= and the network.") from exc
