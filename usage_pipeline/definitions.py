"""All Dagster definitions of usage_pipeline, assembled in one place from the settings."""

from __future__ import annotations

import dagster as dg
from dagster_aws.s3 import S3Resource

from usage_pipeline.billing.definitions import build_billing_definitions
from usage_pipeline.ingest.assets import ingest_job, ingest_usage_files
from usage_pipeline.ingest.sensors import usage_files_sensor
from usage_pipeline.resources import PipelineSettings, UsageDuckDB
from usage_pipeline.settings import Settings, load_settings


def build_resources(settings: Settings) -> dict[str, object]:
    """The one place where the environment picks the S3 endpoint (local server or AWS) and the DuckDB file."""
    return {
        # endpoint_url None = boto3's own resolution (AWS, or AWS_ENDPOINT_URL_S3 when set).
        "s3": S3Resource(endpoint_url=settings.s3_endpoint_url, max_attempts=5),
        "duckdb": UsageDuckDB(
            database=settings.duckdb_path, lock_timeout_seconds=settings.duckdb_lock_timeout.total_seconds()
        ),
        "settings": PipelineSettings.from_settings(settings),
    }


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    ingest = dg.Definitions(
        assets=[ingest_usage_files],
        jobs=[ingest_job],
        sensors=[usage_files_sensor],
    )
    billing = build_billing_definitions(settings)
    return dg.Definitions.merge(ingest, billing, dg.Definitions(resources=build_resources(settings)))


defs = build_definitions()
