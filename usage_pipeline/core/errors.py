"""Infrastructure failures (S3, DuckDB, the catalog, the configuration) as one line naming what to check."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import duckdb
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from usage_pipeline.core.ingest.s3 import S3ReadError
from usage_pipeline.settings import ConfigError, Settings, load_settings

_REJECTED_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
}
_DENIED = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden", "AccountProblem"}
_UNAVAILABLE = {
    "SlowDown",
    "ServiceUnavailable",
    "503",
    "InternalError",
    "500",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
}
# The object vanished between listing and reading: the ingest records that per file, it is not an outage.
_NOT_INFRASTRUCTURE = {"NoSuchKey"}
_MAX_CATALOG_PROBLEMS = 5


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what caused it (`raise from`, handling context, Dagster's user-code error)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        error = todo.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        for inner in (getattr(error, "user_exception", None), error.__cause__, error.__context__):
            if isinstance(inner, BaseException):
                todo.append(inner)


def _attempts(n: int) -> str:
    return f"{n} attempt{'s' if n != 1 else ''}"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _host(url: str) -> str:
    """scheme://host[:port] of a request URL (the bucket and query say nothing about reachability)."""
    match = re.match(r"^[a-z][a-z0-9+.-]*://[^/?#]+", url, re.IGNORECASE)
    return match.group(0) if match else url


def _s3_where(settings: Settings) -> str:
    endpoint = settings.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
    return _host(endpoint) if endpoint else "AWS S3"


def _reason(exc: BaseException) -> str:
    """The OS-level reason inside a connection error ("[Errno 111] Connection refused"), else its type."""
    text = f"{exc} {getattr(exc, 'kwargs', {}).get('error', '')}"
    match = re.search(r"\[Errno -?\d+\][^'\")>]*", text)
    return match.group(0).strip() if match else type(exc).__name__


def _describe_client_error(exc: ClientError, settings: Settings, where: str) -> str | None:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    meta = exc.response.get("ResponseMetadata", {})
    status = meta.get("HTTPStatusCode", "?")
    bucket = error.get("BucketName") or settings.bucket
    operation = exc.operation_name
    if code in _NOT_INFRASTRUCTURE:
        return None
    if code == "NoSuchBucket" or (code == "404" and operation == "HeadBucket"):
        return f"S3: bucket '{bucket}' does not exist at {where} (check USAGE_BUCKET / AWS_ENDPOINT_URL_S3)"
    if code in _REJECTED_CREDENTIALS:
        return (
            f"S3: {where} rejected the credentials ({code}) "
            "(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE)"
        )
    if code in _DENIED or status == 403:
        return (
            f"S3: access denied ({operation}) to bucket '{bucket}' at {where} (check that the credentials "
            f"in use may list and read s3://{bucket}/{settings.prefix}: AWS_PROFILE / AWS_ACCESS_KEY_ID, "
            "IAM and bucket policies)"
        )
    if code in _UNAVAILABLE or (isinstance(status, int) and status >= 500):
        attempts = int(meta.get("RetryAttempts", 0)) + 1
        answer = f"HTTP {status}" if code == str(status) else f"{code} (HTTP {status})"
        return (
            f"S3: {where} still answered {answer} to {operation} after {_attempts(attempts)} "
            "(S3 is throttling or unavailable: try again later, or raise USAGE_S3_MAX_ATTEMPTS)"
        )
    message = f"{code}: {error['Message']}" if error.get("Message") else code
    return (
        f"S3: {operation} on bucket '{bucket}' at {where} failed with {message} "
        "(check USAGE_BUCKET / USAGE_PREFIX and the credentials)"
    )


def _describe_s3(exc: BaseException, settings: Settings) -> str | None:
    where = _s3_where(settings)
    if isinstance(exc, ClientError):
        return _describe_client_error(exc, settings, where)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return (
            f"S3: no usable AWS credentials for {where} (check AWS_PROFILE or AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY; for a local S3 server set AWS_ENDPOINT_URL_S3 and dummy ones are used)"
        )
    if isinstance(exc, ProfileNotFound):
        return f"S3: {exc} (check AWS_PROFILE and AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE)"
    if isinstance(exc, S3ReadError):
        cut_off = f"arrived cut off {_times(exc.attempts)} ({exc.detail})"
        return (
            f"S3: the {exc.operation} response for {exc.key} at {where} {cut_off} "
            "(check the network path to S3, or raise USAGE_S3_MAX_ATTEMPTS)"
        )
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        url = _host(str(exc.kwargs.get("endpoint_url") or where))
        return (
            f"S3: {url} did not answer in time after {_attempts(settings.s3_max_attempts)} "
            "(check AWS_ENDPOINT_URL_S3 and that the S3 server is up and reachable)"
        )
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        url = _host(str(exc.kwargs.get("endpoint_url") or where))
        if isinstance(exc, ConnectionClosedError):
            failure = f"lost the connection to {url} (closed before a response)"
        else:
            failure = f"cannot connect to {url} ({_reason(exc)})"
        return (
            f"S3: {failure} after {_attempts(settings.s3_max_attempts)} "
            "(check AWS_ENDPOINT_URL_S3 and that the S3 server is running and reachable)"
        )
    if isinstance(exc, ParamValidationError):
        return f"S3: {str(exc).splitlines()[0]} (check USAGE_BUCKET / USAGE_PREFIX)"
    if isinstance(exc, ValueError) and str(exc).startswith("Invalid endpoint:"):
        return f"S3: {exc} (check AWS_ENDPOINT_URL_S3: a URL such as http://127.0.0.1:9555)"
    return None


_LAKE_WORDS = ("ducklake", "data_path", "sqlite", "postgres", "not a database", "database is locked")


_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@")


def redact(text: str) -> str:
    """A message with any Postgres password in it blanked out."""
    return _URL_PASSWORD.sub(r"\1***@", _PASSWORD.sub(r"\1***", text))


def _lake_name(settings: Settings) -> str:
    from usage_pipeline.core.storage.lake import Lake

    try:
        return Lake(catalog=settings.lake).describe()
    except ValueError:
        return redact(settings.lake)


def _describe_postgres(exc: BaseException, settings: Settings) -> str | None:
    """The lake's Postgres catalog unreachable or refusing us (psycopg, or DuckDB's postgres scanner)."""
    import psycopg2

    text = str(exc)
    from_duckdb = (
        isinstance(exc, duckdb.Error)
        and "postgres" in text.lower()
        and ("connect" in text.lower() or "authentication" in text.lower())
    )
    if not isinstance(exc, psycopg2.OperationalError) and not from_duckdb:
        return None
    first = redact(next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__))
    lowered = text.lower()
    if "password authentication failed" in lowered:
        what = "the password was refused"
    elif "does not exist" in lowered:
        what = "the database or user does not exist"
    elif "connection refused" in lowered or "could not connect" in lowered or "timeout" in lowered:
        what = "the server is not reachable"
    else:
        what = "the server refused or dropped the connection"
    return (
        f"Postgres (lake catalog): {what}: {first} "
        f"(check USAGE_LAKE={_lake_name(settings)}: host, port, user, password, dbname)"
    )


def _describe_lake(exc: BaseException, settings: Settings) -> str | None:
    from usage_pipeline.core.storage.lake import LakeBusyError, LakeConfigError

    if isinstance(exc, LakeBusyError | LakeConfigError):
        return redact(f"{exc}")
    if isinstance(exc, duckdb.HTTPException) or (
        isinstance(exc, duckdb.Error) and "s3://" in str(exc) and "HTTP" in str(exc)
    ):
        text = str(exc)
        first = text.splitlines()[0] if text else type(exc).__name__
        reason = next((line.strip() for line in text.splitlines()[1:] if line.strip()), "")
        return (
            f"S3 (lake data): {first}{f' — {reason}' if reason else ''} "
            f"(check USAGE_LAKE_DATA={settings.lake_data}, AWS_ENDPOINT_URL_S3 and the S3 credentials)"
        )
    # SQL mistakes (a bug) are not the lake's configuration: only errors that name the lake's parts.
    if not isinstance(exc, duckdb.Error) or isinstance(
        exc, duckdb.CatalogException | duckdb.BinderException | duckdb.ParserException
    ):
        return None
    text = str(exc)
    lowered = text.lower()
    if not any(word in lowered for word in _LAKE_WORDS):
        return None
    where = _lake_name(settings)
    first = redact(text.splitlines()[0] if text else type(exc).__name__)
    if "data_path" in lowered:
        return (
            f"DuckLake: {first} (the catalog {where} keeps its data elsewhere: check USAGE_LAKE_DATA="
            f"{settings.lake_data} against USAGE_LAKE)"
        )
    return f"DuckLake: {first} (check USAGE_LAKE={where} and USAGE_LAKE_DATA={settings.lake_data})"


def _describe_catalog(exc: BaseException, settings: Settings) -> str | None:
    from usage_pipeline.core.catalog.model import CatalogError

    if not isinstance(exc, CatalogError):
        return None
    problems = list(exc.problems)
    shown = "; ".join(problems[:_MAX_CATALOG_PROBLEMS])
    more = (
        f"; and {len(problems) - _MAX_CATALOG_PROBLEMS} more" if len(problems) > _MAX_CATALOG_PROBLEMS else ""
    )
    return (
        f"catalog: {exc.source or settings.catalog_path} is invalid: {shown}{more} (check USAGE_CATALOG_PATH)"
    )


def describe_infrastructure_error(exc: BaseException, settings: Settings | None = None) -> str | None:
    """One line naming the service and what to check, or None when `exc` is not an infrastructure or
    configuration error (a bug, or a bad file that the ingest records as a value).

    Walks the causes, so a Dagster step failure or a wrapper raised `from` the real error is described
    by the error underneath.
    """
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError:
            settings = Settings()
    for error in _chain(exc):
        if isinstance(error, ConfigError):
            return f"configuration: {error}"
        for describe in (_describe_s3, _describe_postgres, _describe_lake, _describe_catalog):
            line = describe(error, settings)
            if line:
                return " ".join(line.split())  # one line, whatever the service's message held
    return None
