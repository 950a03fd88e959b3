"""The S3 client (adaptive retries, local dummy credentials) and listing/reading objects as file versions."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import urllib3.exceptions
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from usage_pipeline.core.ingest.model import FileVersion
from usage_pipeline.core.ingest.spool import DEFAULT_CHUNK_BYTES, Body, Spooler, discard
from usage_pipeline.settings import load_settings

# Used only against an explicit endpoint (a local S3 server) when the boto3 chain finds no credentials.
LOCAL_ACCESS_KEY_ID = "usage-pipeline-local"
LOCAL_SECRET_ACCESS_KEY = "usage-pipeline-local"
LOCAL_REGION = "us-east-1"
DEFAULT_MAX_ATTEMPTS = 10  # the default of Settings.s3_max_attempts (USAGE_S3_MAX_ATTEMPTS)

T = TypeVar("T")

# A body cut off after the headers (Content-Length not reached, reset mid-stream): botocore retries only
# up to the headers, so these are retried here by sending the request again.
_CUT_OFF_ERRORS = (
    IncompleteReadError,
    ResponseStreamingError,
    ReadTimeoutError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
)


class ObjectGone(Exception):
    """The object was deleted between listing and reading."""


class S3ReadError(Exception):
    """An S3 response kept arriving cut off or broken after every attempt; the object is not lost."""

    def __init__(self, key: str, detail: str, attempts: int = 1, operation: str = "GET") -> None:
        self.key, self.detail, self.attempts, self.operation = key, detail, attempts, operation
        super().__init__(f"{operation} {key}: {detail} ({attempts} attempts)")

    def __reduce__(self) -> tuple[type[S3ReadError], tuple[str, str, int, str]]:
        return (type(self), (self.key, self.detail, self.attempts, self.operation))


_credentials_found: dict[tuple[Any, ...], bool] = {}


def _has_credentials(session: boto3.session.Session, profile_name: str | None) -> bool:
    """Whether the boto3 chain finds credentials; cached per environment (the chain may probe the network)."""
    key = (profile_name, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))
    if key not in _credentials_found:
        _credentials_found[key] = session.get_credentials() is not None
    return _credentials_found[key]


def retry_config(max_attempts: int, mode: str = "adaptive") -> Config:
    """botocore retries: `max_attempts` in all, first try included; adaptive mode also slows the client
    down while S3 throttles it."""
    return Config(retries={"mode": mode, "total_max_attempts": max_attempts})  # type: ignore[typeddict-item]


def s3_client(
    endpoint_url: str | None = None,
    max_attempts: int | None = None,
    *,
    retry_mode: str = "adaptive",
    profile_name: str | None = None,
    region_name: str | None = None,
    unsigned: bool = False,
    **client_kwargs: Any,
) -> Any:
    """The one way the product builds an S3 client (CLI, sensor, run resource, demo, generator).

    endpoint_url None = AWS_ENDPOINT_URL_S3 when set, else AWS. With an endpoint and no credentials in the
    boto3 chain, dummy ones are used: a local S3 server needs some, any will do. max_attempts None = the
    USAGE_S3_MAX_ATTEMPTS setting.
    """
    if max_attempts is None:
        max_attempts = load_settings().s3_max_attempts
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    session = boto3.session.Session(profile_name=profile_name)
    config = retry_config(max_attempts, retry_mode)
    if unsigned:
        config = config.merge(Config(signature_version=UNSIGNED))
    elif (
        endpoint
        and not client_kwargs.get("aws_access_key_id")
        and not _has_credentials(session, profile_name)
    ):
        client_kwargs |= {
            "aws_access_key_id": LOCAL_ACCESS_KEY_ID,
            "aws_secret_access_key": LOCAL_SECRET_ACCESS_KEY,
        }
    if endpoint and not (region_name or session.region_name):
        region_name = LOCAL_REGION
    return session.client(
        "s3", endpoint_url=endpoint_url, region_name=region_name, config=config, **client_kwargs
    )


def _total_attempts(client: Any) -> int:
    retries = getattr(getattr(client, "meta", None), "config", None)
    retries = getattr(retries, "retries", None) or {}
    return int(retries.get("total_max_attempts") or DEFAULT_MAX_ATTEMPTS)


def _cut_off_detail(exc: BaseException) -> str:
    """`IncompleteRead(5 bytes read, 6 more expected)` rather than urllib3's nested reprs."""
    match = re.search(r"IncompleteRead\([^)]*\)", str(exc))
    return match.group(0) if match else f"{type(exc).__name__}: {exc}"


def _resend_when_cut_off(client: Any, call: Callable[[], T], key: str, operation: str) -> T:
    """`call()`, sent again (with backoff) while its response body arrives cut off; then S3ReadError."""
    attempts = _total_attempts(client)
    retrying = Retrying(
        retry=retry_if_exception_type(_CUT_OFF_ERRORS),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.05, max=5.0),
        reraise=True,
    )
    try:
        return retrying(call)
    except _CUT_OFF_ERRORS as exc:
        raise S3ReadError(key, _cut_off_detail(exc), attempts, operation) from exc


def _etag(value: str) -> str:
    return value.strip('"')


def list_page(
    client: Any, bucket: str, prefix: str, start_after: str | None, max_keys: int = 1000
) -> tuple[list[FileVersion], bool]:
    """One ListObjectsV2 page in key order (sub-folders included); returns (versions, more_pages)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
    if start_after:
        kwargs["StartAfter"] = start_after
    response = _resend_when_cut_off(
        client, lambda: client.list_objects_v2(**kwargs), f"s3://{bucket}/{prefix}", "LIST"
    )
    versions = [
        FileVersion(
            key=obj["Key"],
            etag=_etag(obj["ETag"]),
            size=int(obj["Size"]),
            last_modified=obj["LastModified"].astimezone(UTC),
        )
        for obj in response.get("Contents", [])
        if not obj["Key"].endswith("/")  # folder placeholder objects
    ]
    return versions, bool(response.get("IsTruncated"))


_PIECE = 1 << 20


def _get_whole_object(client: Any, bucket: str, key: str, spool_over: int) -> tuple[dict[str, Any], Body]:
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey as exc:
        raise ObjectGone(key) from exc
    expected = response.get("ContentLength")
    if expected is None or int(expected) <= spool_over:
        data: Body = response["Body"].read()
    else:  # streamed to local disk a MiB at a time: a big object never sits in memory
        with Spooler(spool_over) as out:
            for piece in iter(lambda: response["Body"].read(_PIECE), b""):
                out.write(piece)
            data = out.finish()
    if expected is not None and len(data) != int(expected):
        discard(data)
        raise IncompleteReadError(actual_bytes=len(data), expected_bytes=int(expected))
    return response, data


def read_version(
    client: Any, bucket: str, file: FileVersion, *, spool_over: int = DEFAULT_CHUNK_BYTES
) -> tuple[Body, FileVersion]:
    """GET the object; returns its bytes (in a temporary file when over `spool_over` bytes: the caller
    removes it) and the version actually read.

    A body cut off short of its Content-Length is fetched again, up to the client's attempts, then
    S3ReadError. When the key was overwritten after it was listed, the bytes belong to the newer version,
    so the returned FileVersion carries the ETag and LastModified of the response: the ledger then records
    what was really ingested, and the sensor's later request for that newer version finds it done.
    """
    response, data = _resend_when_cut_off(
        client,
        lambda: _get_whole_object(client, bucket, file.key, spool_over),
        f"s3://{bucket}/{file.key}",
        "GET",
    )
    read = FileVersion(
        key=file.key,
        etag=_etag(response.get("ETag", file.etag)),
        size=len(data),
        last_modified=response.get("LastModified", file.last_modified).astimezone(UTC),
    )
    return data, read


def httpfs_secret(endpoint_url: str | None) -> dict[str, str]:
    """Options of a DuckDB `TYPE s3` secret: boto3's credentials and region (a dummy pair for an explicit
    endpoint without any, as the S3 clients do), and AWS_ENDPOINT_URL_S3 as endpoint, path-style."""
    session = boto3.Session()
    secret = {"REGION": session.region_name or (LOCAL_REGION if endpoint_url else "us-east-1")}
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        secret["KEY_ID"], secret["SECRET"] = frozen.access_key, frozen.secret_key
        if frozen.token:
            secret["SESSION_TOKEN"] = frozen.token
    elif endpoint_url:
        secret["KEY_ID"], secret["SECRET"] = LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        secret["ENDPOINT"] = parts.netloc or parts.path
        secret["USE_SSL"] = "true" if parts.scheme == "https" else "false"
        secret["URL_STYLE"] = "path"
    return secret
