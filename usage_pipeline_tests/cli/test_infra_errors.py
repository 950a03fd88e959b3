"""Infrastructure failures: one line naming the service and what to check, exit 2; S3 faults retried."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ProfileNotFound,
)

from usage_pipeline.cli.local_s3 import free_port
from usage_pipeline.core.catalog.model import CatalogError
from usage_pipeline.core.errors import describe_infrastructure_error
from usage_pipeline.core.ingest.model import FileVersion
from usage_pipeline.core.ingest.s3 import (
    LOCAL_ACCESS_KEY_ID,
    ObjectGone,
    S3ReadError,
    list_page,
    read_version,
    s3_client,
)
from usage_pipeline.core.storage.lake import Lake, LakeBusyError, connect
from usage_pipeline.definitions import build_resources
from usage_pipeline.settings import Settings
from usage_pipeline_tests.cli.faulty_s3 import FAULT_KINDS, faulty_s3_proxy

CLI = str(Path(sys.executable).parent / "usage-pipeline")
ENDPOINT = "http://127.0.0.1:9555"
SETTINGS = Settings(
    bucket="usage-events", s3_endpoint_url=ENDPOINT, lake="sqlite:/data/usage.sqlite", lake_data="/data/lake/"
)


def client_error(code: str, status: int, operation: str = "ListObjectsV2", **error: str) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": f"{code} happened", **error},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": 9},
    }
    return ClientError(response, operation)  # type: ignore[arg-type]


def describe(exc: BaseException) -> str:
    line = describe_infrastructure_error(exc, SETTINGS)
    assert line is not None and "\n" not in line
    return line


# --- the one-line messages --------------------------------------------------------------------------


def test_s3_client_errors_name_the_bucket_endpoint_and_what_to_check() -> None:
    assert describe(client_error("NoSuchBucket", 404, BucketName="usage-evnts")) == (
        "S3: bucket 'usage-evnts' does not exist at http://127.0.0.1:9555 "
        "(check USAGE_BUCKET / AWS_ENDPOINT_URL_S3)"
    )
    denied = describe(client_error("AccessDenied", 403))
    assert denied.startswith(
        "S3: access denied (ListObjectsV2) to bucket 'usage-events' at http://127.0.0.1:9555"
    )
    assert "s3://usage-events/incoming/" in denied and "AWS_PROFILE" in denied
    for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        assert describe(client_error(code, 403)).startswith(
            f"S3: http://127.0.0.1:9555 rejected the credentials ({code}) (check AWS_ACCESS_KEY_ID"
        )
    assert describe(client_error("SlowDown", 503, "GetObject")) == (
        "S3: http://127.0.0.1:9555 still answered SlowDown (HTTP 503) to GetObject after 10 attempts "
        "(S3 is throttling or unavailable: try again later, or raise USAGE_S3_MAX_ATTEMPTS)"
    )
    assert "InternalError (HTTP 500)" in describe(client_error("InternalError", 500))


def test_connection_and_credential_errors() -> None:
    refused = EndpointConnectionError(
        endpoint_url="http://127.0.0.1:9/usage-events?list-type=2",
        error="<AWSHTTPConnection>: Failed to establish a new connection: [Errno 111] Connection refused",
    )
    assert describe(refused) == (
        "S3: cannot connect to http://127.0.0.1:9 ([Errno 111] Connection refused) after 10 attempts "
        "(check AWS_ENDPOINT_URL_S3 and that the S3 server is running and reachable)"
    )
    closed = describe(ConnectionClosedError(endpoint_url="http://127.0.0.1:9/usage-events/a.csv"))
    assert closed.startswith("S3: lost the connection to http://127.0.0.1:9 (closed before a response)")
    assert describe(NoCredentialsError()).startswith(
        "S3: no usable AWS credentials for http://127.0.0.1:9555 (check AWS_PROFILE or AWS_ACCESS_KEY_ID"
    )
    assert describe(ProfileNotFound(profile="billing")).startswith(
        "S3: The config profile (billing) could not be found (check AWS_PROFILE"
    )
    cut = describe(S3ReadError("s3://usage-events/incoming/a.csv", "IncompleteRead(5 bytes read)", 10))
    assert cut.startswith(
        "S3: the GET response for s3://usage-events/incoming/a.csv at http://127.0.0.1:9555"
    )


def test_lake_catalog_and_configuration_errors(tmp_path: Path) -> None:
    busy = LakeBusyError(
        "DuckLake: the catalog sqlite:/data/usage.sqlite stayed busy for 600 s while writing incoming/a.csv "
        "(another process is writing); USAGE_LAKE_BUSY_TIMEOUT allows 600 s"
    )
    # A wrapper raised `from` the busy error is described by its cause.
    try:
        try:
            raise busy
        except LakeBusyError as exc:
            raise RuntimeError("step failed") from exc
    except RuntimeError as wrapped:
        assert describe(wrapped) == str(busy)
    # A real DuckLake refusal: the catalog keeps its data elsewhere than USAGE_LAKE_DATA says.
    first = Lake(catalog=f"sqlite:{tmp_path / 'c.sqlite'}", data_path=str(tmp_path / "a"))
    with connect(first):
        pass
    with pytest.raises(duckdb.Error) as refused:
        connect(Lake(catalog=first.catalog, data_path=str(tmp_path / "b"))).__enter__()
    line = describe_infrastructure_error(refused.value, SETTINGS)
    assert line is not None and line.startswith("DuckLake: DATA_PATH parameter"), line
    assert "check USAGE_LAKE_DATA=/data/lake/ against USAGE_LAKE" in line
    catalog = CatalogError(["prices[2] (p_x): unknown meter 'm_y'", "meters[0]: id is empty"], "cat.yaml")
    assert describe(catalog) == (
        "catalog: cat.yaml is invalid: prices[2] (p_x): unknown meter 'm_y'; meters[0]: id is empty "
        "(check USAGE_CATALOG_PATH)"
    )


def test_other_errors_are_not_infrastructure() -> None:
    assert describe_infrastructure_error(ValueError("a bug"), SETTINGS) is None
    assert describe_infrastructure_error(KeyError("x"), SETTINGS) is None
    assert describe_infrastructure_error(client_error("NoSuchKey", 404, "GetObject"), SETTINGS) is None


# --- the clients ---------------------------------------------------------------------------------------


def test_every_client_retries_adaptively_and_uses_dummy_credentials_only_for_an_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    resource = build_resources(Settings(s3_endpoint_url=ENDPOINT, s3_max_attempts=7))["s3"]
    clients = [resource.get_client(), s3_client(ENDPOINT, 7)]  # type: ignore[attr-defined]
    for client in clients:
        assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 7}
        assert client._request_signer._credentials.access_key == LOCAL_ACCESS_KEY_ID
    assert s3_client(None, 3)._request_signer._credentials is None  # real AWS: never the dummy ones


# --- the real command line ---------------------------------------------------------------------------


def cli_env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no AWS credentials anywhere, no USAGE_* from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "USAGE_", "DAGSTER_"))}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_ENDPOINT_URL_S3=endpoint,
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        USAGE_LAKE=f"sqlite:{tmp_path / 'usage.sqlite'}",
        USAGE_LAKE_DATA=str(tmp_path / "lake"),
    )
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 and exactly one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_no_credentials_with_a_local_endpoint_generate_and_ingest_work(
    tmp_path: Path, s3_endpoint: str
) -> None:
    bucket = f"usage-{uuid.uuid4().hex[:12]}"  # generate creates it
    env = cli_env(tmp_path, s3_endpoint, USAGE_BUCKET=bucket)
    out = f"s3://{bucket}/incoming/"
    generated = run_cli(env, "generate", "--out", out, "--files", "2", "--rows", "50", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert len(generated.stdout.splitlines()) == 2
    ingested = run_cli(env, "ingest", cwd=tmp_path)
    assert ingested.returncode == 0, (ingested.stdout, ingested.stderr)
    assert "NoCredentialsError" not in ingested.stderr
    assert sum(line.startswith("succeeded") for line in ingested.stdout.splitlines()) == 2, ingested.stdout


def test_a_missing_bucket_is_one_line_naming_it(tmp_path: Path, s3_endpoint: str) -> None:
    env = cli_env(tmp_path, s3_endpoint, USAGE_BUCKET="no-such-usage-bucket")
    assert one_line(run_cli(env, "ingest", cwd=tmp_path)) == (
        f"S3: bucket 'no-such-usage-bucket' does not exist at {s3_endpoint} "
        "(check USAGE_BUCKET / AWS_ENDPOINT_URL_S3)"
    )


def test_an_endpoint_that_is_down_is_one_line_for_every_command(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = cli_env(tmp_path, down, USAGE_S3_MAX_ATTEMPTS="2")
    expected = f"S3: cannot connect to {down} ([Errno 111] Connection refused) after 2 attempts"
    assert one_line(run_cli(env, "ingest", cwd=tmp_path)).startswith(expected)
    generate = run_cli(env, "generate", "--out", "s3://usage-events/incoming/", "--rows", "5", cwd=tmp_path)
    assert one_line(generate).startswith(expected)


def test_a_broken_catalog_stops_close_with_exit_2(tmp_path: Path, s3_endpoint: str) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("meters: [\n")
    env = cli_env(tmp_path, s3_endpoint, USAGE_CATALOG_PATH=str(catalog))
    result = run_cli(env, "close", "--date", date.today().isoformat(), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and str(catalog) in result.stderr


def test_a_misconfigured_lake_is_one_line_for_every_command(tmp_path: Path, s3_endpoint: str) -> None:
    # A catalog file that is not a SQLite database at all.
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    env = cli_env(tmp_path, s3_endpoint, USAGE_LAKE=f"sqlite:{garbage}")
    for args in (["files"], ["close", "--date", date.today().isoformat()]):
        line = one_line(run_cli(env, *args, cwd=tmp_path))
        assert line.startswith("DuckLake: ") and f"check USAGE_LAKE=sqlite:{garbage}" in line, line
    # A USAGE_LAKE that is no catalog form at all.
    env = cli_env(tmp_path, s3_endpoint, USAGE_LAKE="mysql://somewhere")
    line = one_line(run_cli(env, "files", cwd=tmp_path))
    assert "USAGE_LAKE" in line and "sqlite:PATH" in line, line


# --- S3 faults through the proxy ----------------------------------------------------------------------


def listed(client, bucket: str) -> list[str]:
    keys: list[str] = []
    after = None
    while True:
        page, more = list_page(client, bucket, "incoming/", after, max_keys=3)
        keys += [v.key for v in page]
        if not more:
            return keys
        after = page[-1].key


def version(key: str) -> FileVersion:
    return FileVersion(key=key, etag="listed", size=0, last_modified=datetime.now(UTC))


def test_reads_and_listings_get_the_exact_bytes_through_half_failing_requests(
    s3_endpoint: str, s3, bucket: str
) -> None:
    blobs = {f"incoming/f{i:02d}.csv": os.urandom(i * 40_000) for i in range(10)}
    for key, data in blobs.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    with faulty_s3_proxy(s3_endpoint, fail_rate=0.5, seed=1) as proxy:
        client = s3_client(proxy.url, max_attempts=30)
        assert listed(client, bucket) == sorted(blobs)
        for key, data in blobs.items():
            read, read_as = read_version(client, bucket, version(key))
            assert read == data and read_as.size == len(data)
            assert read_as.etag == s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    assert set(proxy.faults) == set(FAULT_KINDS), proxy.faults
    assert proxy.injected >= 0.3 * proxy.requests["GET"]


def test_a_body_cut_off_every_time_is_an_s3_read_error_after_the_attempts(
    s3_endpoint: str, s3, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="incoming/a.csv", Body=b"x" * 1000)
    with faulty_s3_proxy(s3_endpoint, fail_rate=1.0, seed=2, kinds=["cut_off"]) as proxy:
        client = s3_client(proxy.url, max_attempts=3)
        with pytest.raises(S3ReadError) as raised:
            read_version(client, bucket, version("incoming/a.csv"))
    assert raised.value.attempts == 3 and raised.value.key == f"s3://{bucket}/incoming/a.csv"
    assert "IncompleteRead(500 bytes read, 500 more expected)" in raised.value.detail
    assert proxy.faults["cut_off"] == 3
    with pytest.raises(ObjectGone):
        read_version(s3, bucket, version("incoming/gone.csv"))


def test_the_proxy_is_reproducible_and_passes_uploads(s3_endpoint: str, s3, bucket: str) -> None:
    def faults(seed: int) -> list[str]:
        with faulty_s3_proxy(s3_endpoint, fail_rate=0.3, seed=seed) as proxy:
            return [proxy.draw("GET") or "-" for _ in range(50)]

    assert faults(7) == faults(7) != faults(8)
    with faulty_s3_proxy(s3_endpoint, fail_rate=1.0, seed=1) as proxy:
        s3_client(proxy.url, max_attempts=1).put_object(Bucket=bucket, Key="incoming/up.csv", Body=b"abc")
    assert proxy.injected == 0 and proxy.requests["PUT"] == 1
    assert s3.get_object(Bucket=bucket, Key="incoming/up.csv")["Body"].read() == b"abc"
