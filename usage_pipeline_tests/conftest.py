"""Shared fixtures: a real S3 server on loopback, a temporary lake and a Dagster test instance."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from usage_pipeline.cli.local_s3 import local_s3, s3_client
from usage_pipeline.core.storage.lake import Lake, connect, read_only
from usage_pipeline.settings import Settings, lake_of
from usage_pipeline_tests.postgres import PostgresServer, postgres_server, unavailable_reason


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1: the code under test speaks real HTTP to it."""
    with local_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_endpoint: str):
    return s3_client(s3_endpoint)


@pytest.fixture
def bucket(s3) -> str:
    name = f"usage-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings(tmp_path: Path, bucket: str, s3_endpoint: str) -> Settings:
    return Settings(
        bucket=bucket,
        prefix="incoming/",
        s3_endpoint_url=s3_endpoint,
        lake=f"sqlite:{tmp_path / 'usage.sqlite'}",
        lake_data=str(tmp_path / "lake"),
        lake_busy_timeout=120,
    )


def tmp_lake(folder: Path) -> Lake:
    """A lake of its own in `folder`: SQLite catalog, Parquet files beside it."""
    return Lake(
        catalog=f"sqlite:{folder / 'usage.sqlite'}", data_path=str(folder / "lake"), busy_timeout_seconds=120
    )


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return tmp_lake(tmp_path)


@pytest.fixture
def lake_conn(lake: Lake):
    """A writing connection to a fresh lake (schema created): the real storage the pipeline uses."""
    with connect(lake) as conn:
        yield conn


def lake_rows(settings: Settings, query: str, params: object = None) -> list[tuple]:
    """A read-only query on the settings' lake, as an analyst would run it; [] when it was never created."""
    with read_only(lake_of(settings)) as conn:
        return [] if conn is None else conn.execute(query, params).fetchall()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on loopback for the session (skipped, with the reason, where the
    server binaries are not installed)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_settings(settings: Settings, postgres: PostgresServer, s3) -> Settings:
    """The many-machines configuration: a Postgres catalog (a new database) and the lake's data on S3
    (a new bucket on the same local S3 server as the usage files)."""
    data_bucket = f"lake-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=data_bucket)
    return settings.model_copy(
        update={
            "lake": f"postgres:{postgres.dsn(postgres.create_database())}",
            "lake_data": f"s3://{data_bucket}/lake/",
        }
    )


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def put(s3, bucket: str, key: str, body: bytes | str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode() if isinstance(body, str) else body)


def now_s() -> int:
    return int(datetime.now(UTC).timestamp())
