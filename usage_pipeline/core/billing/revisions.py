"""Invoice revisions: what each (re-)close of a date adds, removes or changes on its invoices (SPEC 5)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import duckdb

from usage_pipeline.core.billing import sql
from usage_pipeline.core.storage.lake import current_snapshot
from usage_pipeline.core.storage.values import naive_utc


@dataclass(frozen=True)
class LineChange:
    """One line of a revision; the old side is None for an added line, the new side for a removed one."""

    change: str
    line_item_id: str
    price_id: str
    meter_id: str | None
    old_quantity: Decimal | None
    new_quantity: Decimal | None
    old_amount: Decimal | None
    new_amount: Decimal | None


@dataclass(frozen=True)
class InvoiceRevision:
    invoice_id: str
    revision: int
    subscription_id: str
    currency: str
    total_before: Decimal | None  # None: the invoice is new
    total_after: Decimal | None  # None: the re-close removed the invoice
    lines_added: int
    lines_removed: int
    lines_changed: int
    changes: tuple[LineChange, ...]

    @property
    def difference(self) -> Decimal:
        return (self.total_after or Decimal(0)) - (self.total_before or Decimal(0))


@dataclass(frozen=True)
class RevisionCounts:
    """What one close revised: invoices with a new revision, and their lines by kind of change."""

    invoices: int = 0
    lines_added: int = 0
    lines_removed: int = 0
    lines_changed: int = 0


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _line_change(item: dict[str, Any]) -> LineChange:
    return LineChange(
        change=item["change"],
        line_item_id=item["line_item_id"],
        price_id=item["price_id"],
        meter_id=item["meter_id"],
        old_quantity=_decimal(item["old_quantity"]),
        new_quantity=_decimal(item["new_quantity"]),
        old_amount=_decimal(item["old_amount"]),
        new_amount=_decimal(item["new_amount"]),
    )


def _revision(row: tuple[Any, ...]) -> InvoiceRevision:
    invoice_id, revision, sub, currency, before, after, added, removed, changed, changes = row
    return InvoiceRevision(
        invoice_id=invoice_id,
        revision=int(revision),
        subscription_id=sub,
        currency=currency,
        total_before=before,
        total_after=after,
        lines_added=int(added),
        lines_removed=int(removed),
        lines_changed=int(changed),
        changes=tuple(_line_change(item) for item in json.loads(changes)),
    )


def compare_lines(conn: duckdb.DuckDBPyConnection, close_date: date) -> None:
    """Build the TEMP tables rv_line_changes and rv_revisions: the close date's stored lines against the
    new ones in rt_lines / rt_invoices (see rate_periods). Must run before the old lines are replaced."""
    conn.execute(sql.CREATE_LINE_CHANGES, {"close_date": close_date})
    conn.execute(sql.CREATE_REVISIONS, {"close_date": close_date})


def workspace_revisions(conn: duckdb.DuckDBPyConnection) -> tuple[InvoiceRevision, ...]:
    """The revisions compare_lines found, by subscription: what the close would append."""
    return tuple(_revision(row) for row in conn.execute(sql.WORKSPACE_REVISIONS).fetchall())


def stored_revisions(conn: duckdb.DuckDBPyConnection, invoice_id: str) -> tuple[InvoiceRevision, ...]:
    """Every revision of one invoice, the first first."""
    rows = conn.execute(sql.STORED_REVISIONS, {"invoice_id": invoice_id}).fetchall()
    return tuple(_revision(row) for row in rows)


def record_revisions(
    conn: duckdb.DuckDBPyConnection,
    close_date: date,
    closed_at: datetime,
    *,
    run_id: str | None,
    close_id: str,
) -> RevisionCounts:
    """Append one invoice_revisions row per invoice the close changes (inside the close's transaction,
    before its lines are replaced); the snapshot recorded is the one the transaction reads."""
    compare_lines(conn, close_date)
    conn.execute(
        sql.INSERT_REVISIONS,
        {
            "close_date": close_date,
            "snapshot_id": current_snapshot(conn),
            "closed_at": naive_utc(closed_at),
            "run_id": run_id,
            "close_id": close_id,
        },
    )
    invoices, added, removed, changed = conn.execute(sql.REVISION_COUNTS).fetchall()[0]
    return RevisionCounts(int(invoices), int(added), int(removed), int(changed))


def label_commit(
    conn: duckdb.DuckDBPyConnection, close_date: date, run_id: str | None, close_id: str
) -> None:
    """Name the close's lake commit (author usage_pipeline, message `close D`, extra info with close_date,
    run_id and close_id), so that lake.snapshots() tells which snapshot a close wrote."""
    info = {"close_date": close_date.isoformat(), "run_id": run_id, "close_id": close_id}
    conn.execute(sql.SET_COMMIT_MESSAGE, {"message": f"close {close_date}", "extra_info": json.dumps(info)})


def revision_lines_snapshot(conn: duckdb.DuckDBPyConnection, invoice_id: str, revision: int) -> int:
    """The lake snapshot whose data holds the lines revision `revision` of the invoice describes: the
    commit of its close. Query it with `invoice_line_items AT (VERSION => …)`.

    Raises LookupError when the invoice has no such revision, or its snapshot was expired.
    """
    rows = conn.execute(
        sql.REVISION_LINES_SNAPSHOT, {"invoice_id": invoice_id, "revision": revision}
    ).fetchall()
    if not rows:
        raise LookupError(f"no lake snapshot for revision {revision} of invoice {invoice_id}")
    return int(rows[0][0])
