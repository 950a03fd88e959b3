"""The metering assets of a close date: meter_usage, usage_exceptions and metered_events (one step)."""

import time
from datetime import UTC, date, datetime

import dagster as dg

from usage_pipeline.core.metering.meter import close_metering
from usage_pipeline.core.text import plural
from usage_pipeline.defs.catalog.assets import CATALOG_KEYS, load_catalog_or_fail
from usage_pipeline.defs.metadata import check_spec, row_counts, table_asset_spec, table_entries
from usage_pipeline.defs.metering.checks import usage_exceptions_result
from usage_pipeline.defs.partitions import close_partitions_for
from usage_pipeline.defs.resources import PipelineSettings, UsageLake, infrastructure_failures
from usage_pipeline.settings import definition_settings

USAGE_EVENTS = dg.AssetKey("usage_events")
METERING_KEYS = (dg.AssetKey("meter_usage"), dg.AssetKey("usage_exceptions"), dg.AssetKey("metered_events"))

_DESCRIPTIONS = {
    "meter_usage": "Quantity and event count per subscription, meter and billing period closed on the date.",
    "usage_exceptions": "Events of the close window that could not be metered, with a code and a detail.",
    "metered_events": "Lineage: every event counted into a (subscription, meter, period), by file and row.",
}


_SPECS = [
    table_asset_spec(
        name,
        deps=[USAGE_EVENTS, *CATALOG_KEYS],
        domain="metering",
        kinds={"duckdb"},
        description=description,
    )
    for name, description in _DESCRIPTIONS.items()
]
_CHECK_SPECS = [
    check_spec(
        "usage_exceptions_found",
        asset="usage_exceptions",
        domain="metering",
        description="Every event of the close window could be metered (WARN, with counts and samples).",
    )
]


def metering(context: dg.AssetExecutionContext, lake: UsageLake, settings: PipelineSettings):
    """Meter every subscription period ending on the partition's day (UTC) that is over by now, replacing
    the day's rows in one transaction. Periods ending later today are skipped and listed."""
    close_date = date.fromisoformat(context.partition_key)
    catalog = load_catalog_or_fail(settings)
    started = time.perf_counter()
    with infrastructure_failures(settings.get()), lake.get_connection() as conn:
        result = close_metering(conn, catalog, close_date, now=datetime.now(UTC), run_id=context.run.run_id)
        check = usage_exceptions_result(conn, close_date)
        counts = {name: row_counts(conn, name, close_date) for name in _DESCRIPTIONS}
    seconds = round(time.perf_counter() - started, 3)
    if result.not_over:
        context.log.warning(
            f"skipped {plural(len(result.not_over), 'period')} ending on {close_date}: not over yet"
        )
    common: dict[str, dg.RawMetadataValue] = {
        "close_date": close_date.isoformat(),
        "periods_closed": result.periods_closed,
        "periods_not_over": len(result.not_over),
        "seconds": seconds,
        **table_entries(
            "not_over",
            [(p.subscription_id, p.start, p.end) for p in result.not_over],
            ["subscription", "period start", "period end"],
        ),
    }
    yield dg.MaterializeResult(
        asset_key="meter_usage",
        metadata={**common, "usage_rows": result.usage_rows, **counts["meter_usage"]},
    )
    yield dg.MaterializeResult(
        asset_key="usage_exceptions",
        metadata={
            **common,
            "exceptions": sum(result.exceptions.values()),
            **{f"code:{code}": n for code, n in result.exceptions.items()},
            **counts["usage_exceptions"],
        },
    )
    yield dg.MaterializeResult(
        asset_key="metered_events",
        metadata={**common, "events_metered": result.events_metered, **counts["metered_events"]},
    )
    yield check


@dg.definitions
def metering_definitions() -> dg.Definitions:
    """The close partitions follow the settings (USAGE_CLOSE_START, the catalog), so the asset is built
    with the settings being loaded."""
    partitions = close_partitions_for(definition_settings())
    asset = dg.multi_asset(
        name="metering",
        specs=_SPECS,
        check_specs=_CHECK_SPECS,
        partitions_def=partitions,
        pool="period_close",
    )(metering)
    return dg.Definitions(assets=[asset])
