"""botocore exceptions to domain errors, in one place for the whole S3 adapter (state store and blob store).

The expected answers of a request (a missing key, a failed precondition) are read with ``is_absent`` and
``is_precondition`` where the request is made and become return values, or, for a blob, ``NotFound`` with the
message given as ``missing``; everything else ends here.
Whatever means "S3 cannot serve this request" becomes ``Unavailable``: a network failure, a timeout, a 5xx,
throttling, and also a missing bucket or denied access, which are the server's misconfiguration and never
the caller's fault. A state key too long for an S3 object key becomes ``Invalid``. Domain errors pass through.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from stateport.adapters.shared.errors import TranslatedErrors
from stateport.domain.errors import Invalid, NotFound, StateportError, Unavailable, VersionMismatch

PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
ABSENT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset(
    {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
)


def code_of(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def status_of(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_absent(exc: Exception) -> bool:
    """A missing object (``NoSuchKey``, or a bodiless 404 answering a HEAD), not a missing bucket."""
    return isinstance(exc, ClientError) and code_of(exc) in ABSENT_CODES


def retried(exc: ClientError) -> bool:
    """Whether botocore sent the request more than once (its retries: a reply lost, a 5xx), so that what
    the last attempt met may be the doing of an earlier one."""
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) > 0


def is_precondition(exc: Exception) -> bool:
    """``If-Match``/``If-None-Match`` did not hold (412), or a concurrent conditional write won (409)."""
    return isinstance(exc, ClientError) and code_of(exc) in PRECONDITION_CODES


def translate(exc: Exception, bucket: str) -> StateportError | None:
    """The domain error for a botocore exception, or None for an exception that is not botocore's."""
    match exc:
        case StateportError():
            return None
        case ClientError():
            return _client_error(exc, bucket)
        case NoCredentialsError() | PartialCredentialsError():
            return Unavailable(f"no usable AWS credentials for S3: {_first_line(exc)}")
        case ConnectionError() | HTTPClientError():
            # Connection refused or reset, DNS, connect and read timeouts (botocore's, from timeout_s).
            return Unavailable(f"the S3 endpoint is unavailable: {_first_line(exc)}")
        case BotoCoreError():
            return Unavailable(f"S3 client error: {type(exc).__name__}: {_first_line(exc)}")
    return None


def _client_error(exc: ClientError, bucket: str) -> StateportError:
    code, status = code_of(exc), status_of(exc)
    message = str(exc.response.get("Error", {}).get("Message", "")) or code
    if code in PRECONDITION_CODES:
        return VersionMismatch("the entry changed concurrently")
    if code == "NoSuchBucket" or (status == 404 and code not in ABSENT_CODES):
        return Unavailable(f"the S3 bucket {bucket!r} does not exist")
    if code in DENIED_CODES or status == 403:
        return Unavailable(f"S3 denied access to bucket {bucket!r} ({code}): {message}")
    if code == "KeyTooLongError":
        return Invalid("the key is too long for an S3 object key (1024 bytes with its quoted scope)")
    if status >= 500 or code in {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}:
        return Unavailable(f"S3 cannot serve the request now ({code}): {message}")
    # Any other refusal is still S3 failing this request (a misconfigured endpoint, an unsupported
    # feature), not something the caller can fix.
    return Unavailable(f"S3 refused the request ({code or status}): {message}")


def s3_errors(bucket: str, *, missing: str | None = None) -> TranslatedErrors:
    """The context manager that maps botocore exceptions to domain errors; a missing object is
    ``NotFound(missing)`` when ``missing`` is given (else, like any other refusal, ``Unavailable``)."""

    def mapped(exc: Exception) -> StateportError | None:
        if missing is not None and is_absent(exc):
            return NotFound(missing)
        return translate(exc, bucket)

    return TranslatedErrors(mapped, "s3")


def _first_line(exc: BaseException) -> str:
    """The message on one line, at most 300 characters: botocore's span several ("Parameter validation
    failed:" and the reason on the next line, which the first line alone lost)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text[:300]
