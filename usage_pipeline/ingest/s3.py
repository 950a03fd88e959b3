"""Listing and reading S3 objects as file versions (key + ETag), over boto3."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from usage_pipeline.ingest.model import FileVersion


def _etag(value: str) -> str:
    return value.strip('"')


def list_page(
    client: Any, bucket: str, prefix: str, start_after: str | None, max_keys: int = 1000
) -> tuple[list[FileVersion], bool]:
    """One ListObjectsV2 page in key order (sub-folders included); returns (versions, more_pages)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
    if start_after:
        kwargs["StartAfter"] = start_after
    response = client.list_objects_v2(**kwargs)
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


class ObjectGone(Exception):
    """The object was deleted between listing and reading."""


def read_version(client: Any, bucket: str, file: FileVersion) -> tuple[bytes, FileVersion]:
    """GET the object; returns its bytes and the version actually read.

    When the key was overwritten after it was listed, the bytes belong to the newer version, so the
    returned FileVersion carries the ETag and LastModified of the response: the ledger then records what
    was really ingested, and the sensor's later request for that newer version finds it done.
    """
    try:
        response = client.get_object(Bucket=bucket, Key=file.key)
    except client.exceptions.NoSuchKey as exc:
        raise ObjectGone(file.key) from exc
    data = response["Body"].read()
    read = FileVersion(
        key=file.key,
        etag=_etag(response.get("ETag", file.etag)),
        size=len(data),
        last_modified=response.get("LastModified", file.last_modified).astimezone(UTC),
    )
    return data, read
