"""Dagster resources: thin wrappers that hand plain code an S3 client, a DuckDB connection and settings."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import PrivateAttr

from usage_pipeline.settings import Settings
from usage_pipeline.storage.connection import Log, connect

# The host and process a run executes in: a run whose process is gone is failed and its pool slot freed.
HOST_TAG = "usage_pipeline/host"
PID_TAG = "usage_pipeline/pid"


def process_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


class UsageDuckDB(DuckDBResource):
    """The pipeline's DuckDB file. Waits for another writer's lock instead of failing at once, and says
    in the step's log that it waits, on what, and for how long."""

    lock_timeout_seconds: float = 600.0
    _log: Log | None = PrivateAttr(default=None)

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
        with connect(self.database, self.lock_timeout_seconds, log=self._log) as conn:
            yield conn


class PipelineSettings(dg.ConfigurableResource):
    """The settings of SPEC section 8 as the UI shows them (durations as ISO 8601); `get()` returns the
    typed object. The S3 endpoint and the DuckDB file live in the `s3` and `duckdb` resources."""

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
    from usage_pipeline.errors import describe_infrastructure_error

    try:
        yield
    except Exception as exc:
        line = describe_infrastructure_error(exc, settings)
        if line is None:
            raise
        raise dg.Failure(description=line) from exc
