"""The billing assets of a close date: invoice_line_items and pending_invoices, with their checks."""

import time
from datetime import UTC, date, datetime

import dagster as dg

from usage_pipeline.core.billing.close import close_billing
from usage_pipeline.core.billing.money import format_money
from usage_pipeline.defs.billing.checks import invoice_totals_result, lines_without_events_result
from usage_pipeline.defs.catalog.assets import load_catalog_or_fail
from usage_pipeline.defs.metadata import check_spec, row_counts, table_asset_spec, table_entries
from usage_pipeline.defs.partitions import close_partitions_for
from usage_pipeline.defs.resources import PipelineSettings, UsageLake, infrastructure_failures
from usage_pipeline.settings import definition_settings

_DEPS = [
    dg.AssetKey("meter_usage"),
    dg.AssetKey("metered_events"),
    dg.AssetKey("prices"),
    dg.AssetKey("subscription_prices"),
]

_SPECS = [
    table_asset_spec(
        "invoice_line_items",
        deps=_DEPS,
        domain="billing",
        kinds={"duckdb"},
        description="Priced lines of the periods closed on the date (status pending).",
    ),
    table_asset_spec(
        "pending_invoices",
        deps=_DEPS,
        domain="billing",
        kinds={"duckdb"},
        description="One invoice per (subscription, period) with at least one line; deterministic ids.",
    ),
]
_CHECK_SPECS = [
    check_spec(
        "invoice_totals_match_lines",
        asset="pending_invoices",
        domain="billing",
        description="Every invoice total equals the sum of its (rounded) line amounts.",
    ),
    check_spec(
        "no_line_without_events",
        asset="invoice_line_items",
        domain="billing",
        description="No line for a metered price without events in the period (Chargebee rule).",
    ),
]


def billing(context: dg.AssetExecutionContext, lake: UsageLake, settings: PipelineSettings):
    """Rate the day's closed periods with the catalog's prices, replacing the day's line items and
    pending invoices in one transaction (same ids on every re-close, never a duplicate) and appending a
    revision to each invoice that changed."""
    close_date = date.fromisoformat(context.partition_key)
    catalog = load_catalog_or_fail(settings)
    started = time.perf_counter()
    with infrastructure_failures(settings.get()), lake.get_connection() as conn:
        result = close_billing(conn, catalog, close_date, now=datetime.now(UTC), run_id=context.run.run_id)
        checks = [invoice_totals_result(conn, close_date), lines_without_events_result(conn, close_date)]
        counts = {
            name: row_counts(conn, name, close_date) for name in ("invoice_line_items", "pending_invoices")
        }
    metadata: dict[str, dg.RawMetadataValue] = {
        "close_date": close_date.isoformat(),
        "periods_closed": result.periods,
        "invoices": result.invoices,
        "lines": result.lines,
        # invoice_revisions: the invoices this close changed (new ones included) and how.
        "invoices_revised": result.revised.invoices,
        "lines_added": result.revised.lines_added,
        "lines_removed": result.revised.lines_removed,
        "lines_changed": result.revised.lines_changed,
        "seconds": round(time.perf_counter() - started, 3),
        **{f"total:{t.currency}": format_money(t.total, t.currency) for t in result.totals},
        **table_entries(
            "totals",
            [(t.currency, format_money(t.total, t.currency), t.invoices, t.lines) for t in result.totals],
            ["currency", "total", "invoices", "lines"],
        ),
    }
    for name, table_counts in counts.items():
        yield dg.MaterializeResult(asset_key=name, metadata={**metadata, **table_counts})
    yield from checks


@dg.definitions
def billing_definitions() -> dg.Definitions:
    """Built with the settings being loaded, on the same close partitions as the metering asset."""
    partitions = close_partitions_for(definition_settings())
    asset = dg.multi_asset(
        name="billing", specs=_SPECS, check_specs=_CHECK_SPECS, partitions_def=partitions, pool="period_close"
    )(billing)
    return dg.Definitions(assets=[asset])
