"""Rating a close date: closed periods + metered usage -> invoice line items and pending invoices."""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

import duckdb
import pyarrow as pa

from usage_pipeline.core.billing import sql
from usage_pipeline.core.billing.pricing import rate
from usage_pipeline.core.billing.revisions import (
    InvoiceRevision,
    RevisionCounts,
    compare_lines,
    label_commit,
    record_revisions,
    workspace_revisions,
)
from usage_pipeline.core.catalog.model import Catalog
from usage_pipeline.core.catalog.publish import catalog_relations
from usage_pipeline.core.metering.meter import (
    compute_ahead,
    compute_metering,
    is_current,
    periods_table,
    plan_close,
    planned_as_written,
)
from usage_pipeline.core.storage.lake import lake_snapshot, registered, scratch, transact
from usage_pipeline.core.storage.values import QUANTITY_TYPE, naive_utc

AMOUNT_TYPE = pa.decimal128(38, 4)


@dataclass(frozen=True)
class CurrencyTotal:
    currency: str
    total: Decimal
    invoices: int
    lines: int


@dataclass(frozen=True)
class BillingResult:
    close_date: date
    periods: int
    invoices: int
    lines: int
    totals: tuple[CurrencyTotal, ...] = field(default_factory=tuple)
    revised: RevisionCounts = field(default_factory=RevisionCounts)
    close_id: str | None = None  # in the lake commit's extra info and in each revision it appended


@dataclass(frozen=True)
class ClosePreview:
    """What closing a date now would do, computed and thrown away (`close --dry-run`)."""

    close_date: date
    snapshot_id: int | None  # the lake snapshot it read; None when the lake was never written
    periods: int
    periods_not_over: int
    invoices: int
    lines: int
    revisions: tuple[InvoiceRevision, ...]


def _ratings(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> pa.Table:
    """Price each distinct (price, quantity) of the candidates once with the pricing models."""
    distinct = conn.sql(sql.DISTINCT_RATINGS).arrow()
    if isinstance(distinct, pa.RecordBatchReader):
        distinct = distinct.read_all()
    price_ids = distinct.column("price_id").to_pylist()
    quantities = distinct.column("quantity").to_pylist()
    by_id = catalog.price_by_id
    amounts: list[Decimal] = []
    tiers: list[str] = []
    for price_id, quantity in zip(price_ids, quantities, strict=True):
        rating = rate(by_id[price_id], quantity)
        amounts.append(rating.amount)
        tiers.append(json.dumps(rating.breakdown))
    return pa.table(
        {
            "price_id": pa.array(price_ids, type=pa.string()),
            "quantity": pa.array(quantities, type=QUANTITY_TYPE),
            "amount": pa.array(amounts, type=AMOUNT_TYPE),
            "tiers": pa.array(tiers, type=pa.string()),
        }
    )


def rate_periods(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, periods_relation: str, usage_relation: str
) -> None:
    """Build the TEMP tables rt_lines and rt_invoices for the periods in `periods_relation`
    (subscription_id, customer_id, period_start, period_end) and their usage in `usage_relation`
    (subscription_id, meter_id, period_start, period_end, quantity, event_count). Writes nothing else."""
    with registered(conn, catalog_relations(catalog)):
        conn.execute(sql.CREATE_CANDIDATES.format(periods=periods_relation, usage=usage_relation))
    with registered(conn, {"rt_ratings": _ratings(conn, catalog)}):
        conn.execute(sql.CREATE_LINES)
    conn.execute(sql.CREATE_INVOICES)


def write_billing(conn: duckdb.DuckDBPyConnection, close_date: date, closed_at: datetime) -> None:
    """Replace the close date's line items and pending invoices with rt_lines / rt_invoices (inside the
    caller's transaction): the same ids come back, never a duplicate."""
    params = {"close_date": close_date, "closed_at": naive_utc(closed_at)}
    for statement in sql.DELETE_CLOSE_DATE.values():
        conn.execute(statement, {"close_date": close_date})
    conn.execute(sql.INSERT_LINES, params)
    conn.execute(sql.INSERT_INVOICES, params)


def drop_workspace(conn: duckdb.DuckDBPyConnection) -> None:
    for statement in sql.DROP_WORKSPACE:
        conn.execute(statement)


def close_billing(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    close_date: date,
    now: datetime | None = None,
    run_id: str | None = None,
) -> BillingResult:
    """Rate the stored closed periods and meter usage of `close_date` into invoice_line_items and
    pending_invoices, replacing the date's previous rows in one transaction, and append a revision to
    each invoice that changes (SPEC 5); the commit is labelled with the close's id."""
    now = now or datetime.now(UTC)
    close_id = str(uuid.uuid4())

    def rate() -> None:
        conn.execute(sql.CREATE_STORED_PERIODS, {"close_date": close_date})
        conn.execute(sql.CREATE_STORED_USAGE, {"close_date": close_date})
        rate_periods(conn, catalog, "rt_stored_periods", "rt_stored_usage")

    # The lines and invoices are computed ahead of the write transaction (see compute_ahead), which
    # uses them when it reads the same lake snapshot and otherwise rates again.
    ahead = compute_ahead(conn, rate, lambda: drop_workspace(conn))

    def bill() -> tuple[int, tuple[CurrencyTotal, ...], RevisionCounts]:
        if not is_current(conn, ahead):
            rate()
        # Compared before write_billing deletes the date's old lines.
        revised = record_revisions(conn, close_date, now, run_id=run_id, close_id=close_id)
        write_billing(conn, close_date, now)
        label_commit(conn, close_date, run_id, close_id)
        (periods,) = conn.execute(sql.STORED_PERIOD_COUNT).fetchall()[0]
        totals = tuple(
            CurrencyTotal(currency, total, int(invoices), int(lines))
            for currency, total, invoices, lines in conn.execute(sql.TOTALS_BY_CURRENCY).fetchall()
        )
        drop_workspace(conn)
        return periods, totals, revised

    try:
        periods, totals, revised = transact(conn, bill, what=f"billing {close_date}")
    except BaseException:
        # A workspace computed ahead was committed: it would outlive a failed close.
        with contextlib.suppress(duckdb.Error):
            drop_workspace(conn)
        raise
    return BillingResult(
        close_date=close_date,
        periods=int(periods),
        invoices=sum(t.invoices for t in totals),
        lines=sum(t.lines for t in totals),
        totals=totals,
        revised=revised,
        close_id=close_id,
    )


def preview_close(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, close_date: date, now: datetime | None = None
) -> ClosePreview:
    """Meter and rate `close_date` as its close would now (metering asset, then billing asset) and
    compare with the stored invoices, in a workspace that is rolled back: nothing is written."""
    now = now or datetime.now(UTC)
    plan = plan_close(catalog, close_date, now)
    with planned_as_written(conn), scratch(conn):
        with registered(conn, {"mt_plan": periods_table(plan.periods)}):
            compute_metering(conn, catalog, "mt_plan")
        rate_periods(conn, catalog, "mt_periods", "mt_usage")
        compare_lines(conn, close_date)
        invoices, lines = conn.execute(sql.WORKSPACE_INVOICE_COUNT).fetchall()[0]
        return ClosePreview(
            close_date=close_date,
            snapshot_id=lake_snapshot(conn),
            periods=len(plan.periods),
            periods_not_over=len(plan.not_over),
            invoices=int(invoices),
            lines=int(lines or 0),
            revisions=workspace_revisions(conn),
        )
