"""Dagster resources: thin wrappers that hand plain code an S3 client, a lake connection and settings."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import duckdb
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from usage_pipeline.core.ingest.s3 import s3_client
from usage_pipeline.core.storage.lake import Lake, Log, connect, read_only
from usage_pipeline.settings import Settings, lake_of

# The host and process a run executes in: a run whose process is gone is failed and its pool slot freed.
HOST_TAG = "usage_pipeline/host"
PID_TAG = "usage_pipeline/pid"


def process_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


class UsageLake(dg.ConfigurableResource):
    """The pipeline's DuckLake lake (catalog + data path). A writer that finds the catalog busy waits
    instead of failing at once, and says in the step's log that it waits, on what, and for how long."""

    catalog: str = Field(description="USAGE_LAKE: sqlite:PATH, postgres:<connection string> or duckdb:PATH")
    data_path: str = Field(description="USAGE_LAKE_DATA: a folder or s3://bucket/prefix/")
    busy_timeout_seconds: float = Field(default=600.0, description="USAGE_LAKE_BUSY_TIMEOUT in seconds")
    s3_endpoint_url: str | None = Field(default=None, description="AWS_ENDPOINT_URL_S3, for s3:// data")
    _log: Log | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> UsageLake:
        return cls(
            catalog=settings.lake,
            data_path=settings.lake_data,
            busy_timeout_seconds=settings.lake_busy_timeout.total_seconds(),
            s3_endpoint_url=settings.s3_endpoint_url,
        )

    def lake(self) -> Lake:
        return lake_of(
            Settings(
                lake=self.catalog,
                lake_data=self.data_path,
                lake_busy_timeout=self.busy_timeout_seconds,
                s3_endpoint_url=self.s3_endpoint_url,
            )
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Every run that touches the store says where it runs, so that a killed one can be recognised.
        if context.instance is not None and context.run is not None:
            run = context.instance.get_run_by_id(context.run.run_id)
            if run is not None and run.tags.get(PID_TAG) != str(os.getpid()):
                context.instance.add_run_tags(context.run.run_id, process_tags())
        if context.log is not None:
            self._log = context.log.info

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A writing connection, the schema ensured."""
        with connect(self.lake(), log=self._log) as conn:
            yield conn

    @contextmanager
    def read_only(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A read-only connection (never blocks a writer), or None when nothing was ever written."""
        with read_only(self.lake()) as conn:
            yield conn


class PipelineSettings(dg.ConfigurableResource):
    """The settings of SPEC section 8 as the UI shows them (durations as ISO 8601); `get()` returns the
    typed object. The S3 endpoint and the lake live in the `s3` and `lake` resources."""

    bucket: str
    prefix: str
    catalog_path: str
    max_file_bytes: int
    max_event_age: str
    max_future_skew: str
    close_grace: str
    run_max_files: int
    run_max_bytes: int
    tick_max_runs: int
    tick_list_seconds: float
    listing_overlap: str
    stripe_dedup_window: str
    retry_backoff: str
    retry_backoff_max: str
    s3_max_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineSettings:
        return cls(**settings.model_dump(mode="json", include=set(cls.model_fields)))

    def get(self) -> Settings:
        return Settings(**{name: getattr(self, name) for name in type(self).model_fields})


@contextmanager
def infrastructure_failures(settings: Settings) -> Iterator[None]:
    """A step that fails because a service is down or misconfigured fails with one line that names the
    service and what to check (first in the run's log), not with a stack of driver frames."""
    from usage_pipeline.core.errors import describe_infrastructure_error

    try:
        yield
    except Exception as exc:
        line = describe_infrastructure_error(exc, settings)
        if line is None:
            raise
        raise dg.Failure(description=line) from exc


class PipelineS3Resource(S3Resource):
    """dagster_aws's S3Resource with the product's client (ingest/s3.py `s3_client`): botocore's adaptive
    retries over max_attempts in all, and dummy credentials for an explicit endpoint when none are found."""

    retry_mode: str = Field(
        default="adaptive", description="botocore retry mode: adaptive, standard, legacy."
    )

    def get_client(self) -> Any:
        optional = {
            "use_ssl": self.use_ssl,
            "verify": self.verify,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
            "aws_session_token": self.aws_session_token,
        }
        return s3_client(
            self.endpoint_url,
            self.max_attempts,
            retry_mode=self.retry_mode,
            profile_name=self.profile_name,
            region_name=self.region_name,
            unsigned=self.use_unsigned_session,
            **{k: v for k, v in optional.items() if v is not None},
        )


def build_resources(settings: Settings) -> dict[str, object]:
    """The one place where the environment picks the S3 endpoint (local server or AWS) and the lake."""
    return {
        # endpoint_url None = boto3's own resolution (AWS, or AWS_ENDPOINT_URL_S3 when set).
        "s3": PipelineS3Resource(
            endpoint_url=settings.s3_endpoint_url, max_attempts=settings.s3_max_attempts
        ),
        "lake": UsageLake.from_settings(settings),
        "settings": PipelineSettings.from_settings(settings),
    }
