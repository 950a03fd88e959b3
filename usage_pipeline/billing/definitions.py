"""The billing side's Dagster definitions (catalog, metering, billing, checks, job, schedule)."""

from __future__ import annotations

import dagster as dg

from usage_pipeline.billing.assets import billing
from usage_pipeline.billing.checks import late_usage
from usage_pipeline.billing.jobs import period_close_job
from usage_pipeline.billing.schedules import build_period_close_schedule
from usage_pipeline.catalog.assets import catalog
from usage_pipeline.metering.assets import metering
from usage_pipeline.settings import Settings


def build_billing_definitions(settings: Settings) -> dg.Definitions:
    """Assets, checks, the period_close job and its schedule; resources `duckdb` (UsageDuckDB) and
    `settings` (PipelineSettings) come from the merged top-level Definitions."""
    return dg.Definitions(
        assets=[catalog, metering, billing],
        asset_checks=[late_usage],
        jobs=[period_close_job],
        schedules=[build_period_close_schedule(settings.close_grace)],
    )
