"""The embedded local S3 endpoint (moto's server on loopback) for the demo, `dev` and the tests."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from moto.server import ThreadedMotoServer

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "usage-pipeline-local",
    "AWS_SECRET_ACCESS_KEY": "usage-pipeline-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_s3(port: int | None = None, bucket: str | None = None) -> Iterator[str]:
    """Run a local S3 server on 127.0.0.1, point this process (and its children) at it, yield its URL.

    Credentials are set to dummy values only where none are configured, so no AWS account is needed.
    """
    port = port or free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*LOCAL_CREDENTIALS, "AWS_ENDPOINT_URL_S3"]}
    for key, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    try:
        if bucket:
            ensure_bucket(s3_client(endpoint), bucket)
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def s3_client(endpoint: str | None = None):
    return boto3.client("s3", endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL_S3"))


def ensure_bucket(client, bucket: str) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
