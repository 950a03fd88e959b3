"""Asset checks of the billing domain, and the tables they show in the Dagster UI."""

from datetime import date

import dagster as dg
import duckdb as duckdb_module

from usage_pipeline.core.billing import sql
from usage_pipeline.core.billing.late import find_late_usage
from usage_pipeline.core.billing.money import format_money
from usage_pipeline.core.catalog.model import CatalogError, load_catalog
from usage_pipeline.core.text import plural
from usage_pipeline.defs.metadata import check_spec_metadata, table_entries
from usage_pipeline.defs.resources import PipelineSettings, UsageLake


def _error_check(
    check_name: str, asset: str, counted: str, headers: list[str], rows: list[tuple[object, ...]]
) -> dg.AssetCheckResult:
    """An ERROR check that passes when `rows` (the offending ones) is empty, and lists them otherwise."""
    metadata: dict[str, dg.RawMetadataValue] = {
        counted: len(rows),
        **table_entries("offending", rows, headers),
    }
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=asset,
        passed=not rows,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
    )


def invoice_totals_result(conn: duckdb_module.DuckDBPyConnection, close_date: date) -> dg.AssetCheckResult:
    return _error_check(
        "invoice_totals_match_lines",
        "pending_invoices",
        "mismatched_invoices",
        ["invoice", "subscription", "currency", "total", "lines", "sum of lines", "line rows"],
        conn.execute(sql.INVOICE_TOTAL_MISMATCHES, {"close_date": close_date}).fetchall(),
    )


def lines_without_events_result(
    conn: duckdb_module.DuckDBPyConnection, close_date: date
) -> dg.AssetCheckResult:
    return _error_check(
        "no_line_without_events",
        "invoice_line_items",
        "lines_without_events",
        ["line item", "invoice", "subscription", "price", "meter", "period end"],
        conn.execute(sql.LINES_WITHOUT_EVENTS, {"close_date": close_date}).fetchall(),
    )


@dg.asset_check(
    asset=dg.AssetKey("usage_events"),
    name="late_usage",
    description=(
        "No event arrived after its period was closed; late ones are billed only when their close date is "
        "re-run (WARN: the close dates to re-run, the money at stake)."
    ),
    # Evaluated by every ingest (new events may be late) and by every close, after the billing step (a
    # re-close bills the late events: its run leaves the check's fresh, passing evaluation).
    additional_deps=[dg.AssetKey("pending_invoices")],
    blocking=False,
    metadata=check_spec_metadata("billing"),
)
def late_usage(lake: UsageLake, settings: PipelineSettings) -> dg.AssetCheckResult:
    # A broken catalog is reported here, not allowed to fail (and so retry) the ingest run; the close
    # itself refuses a broken catalog before this check runs.
    try:
        catalog = load_catalog(settings.get().catalog_path)
    except CatalogError as exc:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"late usage not evaluated: {exc}",
            metadata={"catalog": settings.get().catalog_path},
        )
    with lake.get_connection() as conn:
        report = find_late_usage(conn, catalog)
    rows = [
        (
            p.close_date,
            p.subscription_id,
            p.period_start,
            p.period_end,
            p.late_events,
            p.currency,
            format_money(p.invoiced_total, p.currency),
            format_money(p.rerated_total, p.currency),
            format_money(p.at_stake, p.currency),
        )
        for p in report.periods
    ]
    headers = [
        "close date",
        "subscription",
        "period start",
        "period end",
        "late events",
        "currency",
        "invoiced",
        "re-rated",
        "at stake",
    ]
    metadata: dict[str, dg.RawMetadataValue] = {
        "late_events": report.late_events,
        "periods": len(report.periods),
        "close_dates_to_reclose": ", ".join(d.isoformat() for d in report.close_dates) or "none",
        **{
            f"at_stake:{currency}": format_money(amount, currency)
            for currency, amount in report.at_stake_by_currency.items()
        },
        **table_entries("late_periods", rows, headers),
    }
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=(
            None
            if not rows
            else f"{plural(report.late_events, 'late event')} in {plural(len(rows), 'closed period')}: "
            + "re-close "
            + ", ".join(d.isoformat() for d in report.close_dates)
        ),
    )
