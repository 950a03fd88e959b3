"""The embedded local S3 endpoint (moto's server on loopback) for the demo, `dev` and the tests."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from usage_pipeline.core.ingest.s3 import (
    LOCAL_ACCESS_KEY_ID,
    LOCAL_REGION,
    LOCAL_SECRET_ACCESS_KEY,
    s3_client,
)

# The dummy credentials as environment variables, for processes that build their own boto3 clients
# (the benchmark); the product's clients fall back to them by themselves (see ingest/s3.py: s3_client).
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_ACCESS_KEY,
    "AWS_DEFAULT_REGION": LOCAL_REGION,
}

__all__ = ["LOCAL_CREDENTIALS", "ensure_bucket", "free_port", "local_s3", "s3_client"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_s3(
    port: int | None = None, bucket: str | None = None, *, own_process: bool = False
) -> Iterator[str]:
    """Run a local S3 server on 127.0.0.1, point this process (and its children) at it, yield its URL.

    No credentials are needed: with an endpoint set and none configured, every client the product builds
    uses dummy ones. `own_process` serves from a child process, so that serving bytes does not compete with
    this process's GIL (the benchmark); otherwise a thread of this process serves (demo, `dev`, tests).
    """
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with _own_process_server(port) if own_process else _threaded_server(port):
        saved = os.environ.get("AWS_ENDPOINT_URL_S3")
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
        try:
            if bucket:
                ensure_bucket(s3_client(endpoint), bucket)
            yield endpoint
        finally:
            if saved is None:
                os.environ.pop("AWS_ENDPOINT_URL_S3", None)
            else:
                os.environ["AWS_ENDPOINT_URL_S3"] = saved


@contextmanager
def _threaded_server(port: int) -> Iterator[None]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield
    finally:
        server.stop()


@contextmanager
def _own_process_server(port: int) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = s3_client(f"http://127.0.0.1:{port}", max_attempts=1)
        for _ in range(100):  # until it answers, at most 10 s
            try:
                client.list_buckets()
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise RuntimeError("the local S3 server did not start")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ensure_bucket(client: Any, bucket: str) -> None:
    """Create the bucket unless it exists (HEAD needs no right to list every bucket of the account)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise
        client.create_bucket(Bucket=bucket)
