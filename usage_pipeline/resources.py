"""Dagster resources: thin wrappers that hand plain code an S3 client, a DuckDB connection and settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from usage_pipeline.settings import Settings
from usage_pipeline.storage.connection import connect


class UsageDuckDB(DuckDBResource):
    """The pipeline's DuckDB file. Waits for another writer's lock instead of failing at once."""

    lock_timeout_seconds: float = 600.0

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(self.database, self.lock_timeout_seconds) as conn:
            yield conn


class PipelineSettings(dg.ConfigurableResource):
    """The settings of SPEC section 8 as the UI shows them; `get()` returns the typed object."""

    bucket: str
    prefix: str
    catalog_path: str
    max_file_bytes: int
    max_event_age_seconds: float
    max_future_skew_seconds: float
    close_grace_seconds: float
    run_max_files: int
    run_max_bytes: int
    tick_max_runs: int
    tick_list_seconds: float
    listing_overlap_seconds: float
    stripe_dedup_window_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineSettings:
        return cls(
            bucket=settings.bucket,
            prefix=settings.prefix,
            catalog_path=settings.catalog_path,
            max_file_bytes=settings.max_file_bytes,
            max_event_age_seconds=settings.max_event_age.total_seconds(),
            max_future_skew_seconds=settings.max_future_skew.total_seconds(),
            close_grace_seconds=settings.close_grace.total_seconds(),
            run_max_files=settings.run_max_files,
            run_max_bytes=settings.run_max_bytes,
            tick_max_runs=settings.tick_max_runs,
            tick_list_seconds=settings.tick_list_seconds,
            listing_overlap_seconds=settings.listing_overlap.total_seconds(),
            stripe_dedup_window_seconds=settings.stripe_dedup_window.total_seconds(),
        )

    def get(self) -> Settings:
        return Settings(
            bucket=self.bucket,
            prefix=self.prefix,
            catalog_path=self.catalog_path,
            max_file_bytes=self.max_file_bytes,
            max_event_age=self.max_event_age_seconds,
            max_future_skew=self.max_future_skew_seconds,
            close_grace=self.close_grace_seconds,
            run_max_files=self.run_max_files,
            run_max_bytes=self.run_max_bytes,
            tick_max_runs=self.tick_max_runs,
            tick_list_seconds=self.tick_list_seconds,
            listing_overlap=self.listing_overlap_seconds,
            stripe_dedup_window=self.stripe_dedup_window_seconds,
        )
