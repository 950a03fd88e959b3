"""The billing assets of a close date: invoice_line_items and pending_invoices, with their checks."""

import time
from datetime import UTC, date, datetime

import dagster as dg

from usage_pipeline.billing.checks import invoice_totals_result, lines_without_events_result
from usage_pipeline.billing.close import close_billing
from usage_pipeline.billing.partitions import close_partitions
from usage_pipeline.catalog.assets import load_catalog_or_fail
from usage_pipeline.resources import PipelineSettings, UsageDuckDB, infrastructure_failures
from usage_pipeline.ui import md_text

_DEPS = [
    dg.AssetKey("meter_usage"),
    dg.AssetKey("metered_events"),
    dg.AssetKey("prices"),
    dg.AssetKey("subscription_prices"),
]


@dg.multi_asset(
    name="billing",
    specs=[
        dg.AssetSpec(
            "invoice_line_items",
            deps=_DEPS,
            group_name="billing",
            kinds={"duckdb"},
            description="Priced lines of the periods closed on the date (status pending).",
        ),
        dg.AssetSpec(
            "pending_invoices",
            deps=_DEPS,
            group_name="billing",
            kinds={"duckdb"},
            description="One invoice per (subscription, period) with at least one line; deterministic ids.",
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "invoice_totals_match_lines",
            asset="pending_invoices",
            description="Every invoice total equals the sum of its (rounded) line amounts.",
        ),
        dg.AssetCheckSpec(
            "no_line_without_events",
            asset="invoice_line_items",
            description="No line for a metered price without events in the period (Chargebee rule).",
        ),
    ],
    partitions_def=close_partitions,
    pool="duckdb",
)
def billing(context: dg.AssetExecutionContext, duckdb: UsageDuckDB, settings: PipelineSettings):
    """Rate the day's closed periods with the catalog's prices, replacing the day's line items and
    pending invoices in one transaction (same ids on every re-close, never a duplicate)."""
    close_date = date.fromisoformat(context.partition_key)
    catalog = load_catalog_or_fail(settings)
    started = time.perf_counter()
    with infrastructure_failures(settings.get()), duckdb.get_connection() as conn:
        result = close_billing(conn, catalog, close_date, now=datetime.now(UTC))
        checks = [invoice_totals_result(conn, close_date), lines_without_events_result(conn, close_date)]
    metadata: dict[str, dg.RawMetadataValue] = {
        "close_date": close_date.isoformat(),
        "periods_closed": result.periods,
        "invoices": result.invoices,
        "lines": result.lines,
        "seconds": round(time.perf_counter() - started, 3),
        **{f"total:{t.currency}": str(t.total) for t in result.totals},
        "totals": dg.MetadataValue.md(
            md_text(
                ["currency", "total", "invoices", "lines"],
                [(t.currency, t.total, t.invoices, t.lines) for t in result.totals],
            )
        ),
    }
    yield dg.MaterializeResult(asset_key="invoice_line_items", metadata=metadata)
    yield dg.MaterializeResult(asset_key="pending_invoices", metadata=metadata)
    yield from checks
