"""The S3 access DuckDB's httpfs gets for a lake whose data lives on S3: the usage bucket's own settings."""

from __future__ import annotations

from urllib.parse import urlsplit

import boto3

from usage_pipeline.core.ingest.s3 import LOCAL_ACCESS_KEY_ID, LOCAL_REGION, LOCAL_SECRET_ACCESS_KEY


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
