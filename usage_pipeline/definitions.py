"""All Dagster definitions of usage_pipeline, assembled in one place from the settings."""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from usage_pipeline.billing.definitions import build_billing_definitions
from usage_pipeline.ingest.assets import ingest_job, ingest_usage_files
from usage_pipeline.ingest.s3 import s3_client
from usage_pipeline.ingest.sensors import usage_files_sensor
from usage_pipeline.resources import PipelineSettings, UsageDuckDB
from usage_pipeline.settings import Settings, load_settings


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
    """The one place where the environment picks the S3 endpoint (local server or AWS) and the DuckDB file."""
    return {
        # endpoint_url None = boto3's own resolution (AWS, or AWS_ENDPOINT_URL_S3 when set).
        "s3": PipelineS3Resource(
            endpoint_url=settings.s3_endpoint_url, max_attempts=settings.s3_max_attempts
        ),
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
