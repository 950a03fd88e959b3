"""Invoice revisions: every (re-)close appends what it changed per invoice, and the lake, queried as of a
revision's snapshot, gives back exactly that revision's lines."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

import duckdb
import pytest

from usage_pipeline.core.billing.close import BillingResult, close_billing, preview_close
from usage_pipeline.core.billing.revisions import (
    InvoiceRevision,
    revision_lines_snapshot,
    stored_revisions,
)
from usage_pipeline.core.catalog.model import Catalog
from usage_pipeline.core.metering.meter import close_metering
from usage_pipeline.core.storage.lake import LAKE_ALIAS
from usage_pipeline_tests.core.test_close import billing_catalog, invoices, store_usage
from usage_pipeline_tests.core.test_metering import AFTER, CLOSE, chargebee, stripe

LATEST_SNAPSHOT = f"SELECT max(snapshot_id) FROM {LAKE_ALIAS}.snapshots()"


def close(conn: duckdb.DuckDBPyConnection, catalog: Catalog, now: datetime, run_id: str) -> BillingResult:
    """The period_close job without Dagster: the metering asset, then the billing asset."""
    close_metering(conn, catalog, CLOSE, now=now, run_id=run_id)
    return close_billing(conn, catalog, CLOSE, now=now, run_id=run_id)


def invoice_of(conn: duckdb.DuckDBPyConnection, subscription_id: str) -> str:
    return invoices(conn)[subscription_id][0]


def revisions_by_sub(conn: duckdb.DuckDBPyConnection) -> dict[str, list[int]]:
    rows = conn.execute(
        "SELECT subscription_id, revision FROM invoice_revisions ORDER BY subscription_id, revision"
    ).fetchall()
    found: dict[str, list[int]] = {}
    for sub, revision in rows:
        found.setdefault(sub, []).append(revision)
    return found


def by_price(revision: InvoiceRevision) -> dict[str, tuple[str, object, object, object, object]]:
    return {
        c.price_id: (c.change, c.old_quantity, c.new_quantity, c.old_amount, c.new_amount)
        for c in revision.changes
    }


def test_first_close_is_revision_1_with_every_line_added(lake_conn: duckdb.DuckDBPyConnection) -> None:
    store_usage(lake_conn)
    catalog = billing_catalog()
    before = lake_conn.execute(LATEST_SNAPSHOT).fetchall()[0][0]

    result = close(lake_conn, catalog, AFTER, run_id="run-1")

    assert (result.revised.invoices, result.revised.lines_added) == (3, 7)
    assert (result.revised.lines_removed, result.revised.lines_changed) == (0, 0)
    assert revisions_by_sub(lake_conn) == {"sub_a": [1], "sub_b": [1], "sub_d": [1]}
    (first,) = stored_revisions(lake_conn, invoice_of(lake_conn, "sub_a"))
    assert (first.revision, first.total_before, first.total_after) == (1, None, Decimal("637.50"))
    assert (first.lines_added, first.lines_removed, first.lines_changed) == (5, 0, 0)
    assert by_price(first) == {
        "base": ("added", None, Decimal(1), None, Decimal(49)),
        "calls_pkg": ("added", None, Decimal(21), None, Decimal(300)),
        "tokens_tiered": ("added", None, Decimal(21), None, Decimal(163)),
        "storage_volume": ("added", None, Decimal("100.5"), None, Decimal("100.5")),
        "seats_stairs": ("added", None, Decimal(3), None, Decimal(25)),
    }
    # Every stored line is in the revision, under its own id.
    line_ids = lake_conn.execute(
        "SELECT line_item_id FROM invoice_line_items WHERE subscription_id = 'sub_a' ORDER BY 1"
    ).fetchall()
    assert sorted(c.line_item_id for c in first.changes) == [i for (i,) in line_ids]

    # Decimals are JSON strings, never floats; the row names the run, the close and the snapshot read.
    raw, snapshot_id, run_id, close_id, closed_at = lake_conn.execute(
        "SELECT changes, snapshot_id, run_id, close_id, closed_at FROM invoice_revisions "
        "WHERE subscription_id = 'sub_a'"
    ).fetchall()[0]
    calls = next(c for c in json.loads(raw) if c["price_id"] == "calls_pkg")
    assert calls == {
        "change": "added",
        "line_item_id": calls["line_item_id"],
        "price_id": "calls_pkg",
        "meter_id": "calls",
        "old_quantity": None,
        "new_quantity": "21",
        "old_amount": None,
        "new_amount": "300",
    }
    assert (run_id, close_id, closed_at) == ("run-1", result.close_id, AFTER.replace(tzinfo=None))
    assert before < snapshot_id  # the close read the lake after its metering committed

    # The close's commit is labelled in the lake's own snapshot list.
    author, message, info = lake_conn.execute(
        f"SELECT author, commit_message, commit_extra_info FROM {LAKE_ALIAS}.snapshots() "
        "WHERE snapshot_id = $s",
        {"s": revision_lines_snapshot(lake_conn, first.invoice_id, 1)},
    ).fetchall()[0]
    assert (author, message) == ("usage_pipeline", f"close {CLOSE}")
    assert json.loads(info) == {
        "close_date": CLOSE.isoformat(),
        "run_id": "run-1",
        "close_id": result.close_id,
    }


def test_reclose_after_more_usage_appends_revision_2_with_the_changed_lines(
    lake_conn: duckdb.DuckDBPyConnection,
) -> None:
    store_usage(lake_conn)
    catalog = billing_catalog()
    close(lake_conn, catalog, AFTER, run_id="run-1")
    for minute in range(10):  # sub_a: 21 -> 31 calls, 3 -> 4 packages
        stripe(lake_conn, "api_call", "cus_a", f"2026-03-01 20:{minute:02d}:00")

    result = close(lake_conn, catalog, AFTER + timedelta(hours=1), run_id="run-2")

    assert (result.revised.invoices, result.revised.lines_changed, result.revised.lines_added) == (1, 1, 0)
    assert revisions_by_sub(lake_conn) == {"sub_a": [1, 2], "sub_b": [1], "sub_d": [1]}
    second = stored_revisions(lake_conn, invoice_of(lake_conn, "sub_a"))[1]
    assert (second.revision, second.total_before, second.total_after) == (
        2,
        Decimal("637.50"),
        Decimal("737.50"),
    )
    assert (second.lines_added, second.lines_removed, second.lines_changed) == (0, 0, 1)
    assert by_price(second) == {
        "calls_pkg": ("changed", Decimal(21), Decimal(31), Decimal(300), Decimal(400)),
    }


def test_reclose_without_change_appends_no_revision(lake_conn: duckdb.DuckDBPyConnection) -> None:
    store_usage(lake_conn)
    catalog = billing_catalog()
    close(lake_conn, catalog, AFTER, run_id="run-1")

    result = close(lake_conn, catalog, AFTER + timedelta(hours=1), run_id="run-2")

    assert result.revised.invoices == 0
    assert revisions_by_sub(lake_conn) == {"sub_a": [1], "sub_b": [1], "sub_d": [1]}


def test_removed_lines_and_a_removed_invoice(lake_conn: duckdb.DuckDBPyConnection) -> None:
    store_usage(lake_conn)
    catalog = billing_catalog()
    close(lake_conn, catalog, AFTER, run_id="run-1")
    sub_d_invoice = invoice_of(lake_conn, "sub_d")
    # The seats events of sub_a and every call of cus_d go away: no metered line without events.
    lake_conn.execute("DELETE FROM usage_events WHERE properties->>'feature' = 'seats'")
    lake_conn.execute("DELETE FROM usage_events WHERE customer_id = 'cus_d'")

    result = close(lake_conn, catalog, AFTER + timedelta(hours=1), run_id="run-2")

    assert (result.revised.invoices, result.revised.lines_removed) == (2, 2)
    sub_a = stored_revisions(lake_conn, invoice_of(lake_conn, "sub_a"))[1]
    assert (sub_a.total_before, sub_a.total_after) == (Decimal("637.50"), Decimal("612.50"))
    assert by_price(sub_a) == {"seats_stairs": ("removed", Decimal(3), None, Decimal(25), None)}
    sub_d = stored_revisions(lake_conn, sub_d_invoice)[1]
    assert (sub_d.revision, sub_d.currency, sub_d.total_before, sub_d.total_after) == (
        2,
        "JPY",
        Decimal(1),
        None,
    )
    assert by_price(sub_d) == {"calls_jpy": ("removed", Decimal(3), None, Decimal(1), None)}
    assert "sub_d" not in invoices(lake_conn)

    # The invoice comes back with its next revision number, every line added again.
    stripe(lake_conn, "api_call", "cus_d", "2026-03-01 16:00:00")
    close(lake_conn, catalog, AFTER + timedelta(hours=2), run_id="run-3")
    back = stored_revisions(lake_conn, sub_d_invoice)[2]
    assert (back.revision, back.total_before, back.total_after) == (3, None, Decimal(0))
    assert by_price(back) == {"calls_jpy": ("added", None, Decimal(1), None, Decimal(0))}


def lines_as_of(conn: duckdb.DuckDBPyConnection, invoice_id: str, snapshot: int) -> dict[str, tuple]:
    rows = conn.execute(
        "SELECT line_item_id, quantity, amount FROM invoice_line_items AT (VERSION => $snapshot) "
        "WHERE invoice_id = $invoice_id",
        {"snapshot": snapshot, "invoice_id": invoice_id},
    ).fetchall()
    return {line_item_id: (quantity, amount) for line_item_id, quantity, amount in rows}


def test_the_lake_as_of_a_revision_gives_back_its_lines_after_later_ingests_and_recloses(
    lake_conn: duckdb.DuckDBPyConnection,
) -> None:
    catalog = billing_catalog()
    store_usage(lake_conn)
    close(lake_conn, catalog, AFTER, run_id="run-1")
    # More usage: sub_a's calls change, sub_b gets its first metered line.
    for minute in range(10):
        stripe(lake_conn, "api_call", "cus_a", f"2026-03-01 20:{minute:02d}:00")
    stripe(lake_conn, "api_call", "cus_b", "2026-03-01 21:00:00")
    close(lake_conn, catalog, AFTER + timedelta(hours=1), run_id="run-2")
    # More again: sub_a's seats and tokens change, sub_d's calls are gone (invoice removed).
    for user in ("u4", "u5", "u6", "u7", "u8", "u9"):
        chargebee(lake_conn, "sub_a", "2026-03-01 18:00:00", feature="seats", user_id=user)
    stripe(lake_conn, "tokens", "cus_a", "2026-03-01 19:00:00", value="4")
    lake_conn.execute("DELETE FROM usage_events WHERE customer_id = 'cus_d'")
    close(lake_conn, catalog, AFTER + timedelta(hours=2), run_id="run-3")
    # One more call (32 calls, still 4 packages: only the quantity changes), and a close with no change.
    stripe(lake_conn, "api_call", "cus_a", "2026-03-01 22:00:00")
    close(lake_conn, catalog, AFTER + timedelta(hours=3), run_id="run-4")
    close(lake_conn, catalog, AFTER + timedelta(hours=4), run_id="run-5")
    # Late usage not closed yet: stored now, in no revision.
    stripe(lake_conn, "api_call", "cus_a", "2026-03-01 22:30:00")
    stripe(lake_conn, "api_call", "cus_d", "2026-03-01 22:30:00")

    invoice_ids = [
        i for (i,) in lake_conn.execute("SELECT DISTINCT invoice_id FROM invoice_revisions").fetchall()
    ]
    assert revisions_by_sub(lake_conn) == {"sub_a": [1, 2, 3, 4], "sub_b": [1, 2], "sub_d": [1, 2]}
    checked = 0
    for invoice_id in invoice_ids:
        expected: dict[str, tuple] = {}
        for r in stored_revisions(lake_conn, invoice_id):
            for c in r.changes:  # replaying the revisions up to r: the lines r leaves behind
                if c.change == "removed":
                    del expected[c.line_item_id]
                else:
                    expected[c.line_item_id] = (c.new_quantity, c.new_amount)
            snapshot = revision_lines_snapshot(lake_conn, invoice_id, r.revision)
            read = lake_conn.execute(
                "SELECT snapshot_id FROM invoice_revisions WHERE invoice_id = $i AND revision = $r",
                {"i": invoice_id, "r": r.revision},
            ).fetchall()[0][0]
            assert read < snapshot

            assert lines_as_of(lake_conn, invoice_id, snapshot) == expected
            totals = lake_conn.execute(
                "SELECT total FROM pending_invoices AT (VERSION => $s) WHERE invoice_id = $i",
                {"s": snapshot, "i": invoice_id},
            ).fetchall()
            assert totals == ([] if r.total_after is None else [(r.total_after,)])
            assert r.total_after == (sum(a for _, a in expected.values()) if expected else None)
            checked += 1
    assert checked == 8
    quantity_only = stored_revisions(lake_conn, invoice_of(lake_conn, "sub_a"))[3]
    assert by_price(quantity_only) == {
        "calls_pkg": ("changed", Decimal(31), Decimal(32), Decimal(400), Decimal(400)),
    }
    # Time travel matters: sub_a's first revision is not what the lake holds now.
    sub_a = invoice_of(lake_conn, "sub_a")
    now_lines = lines_as_of(lake_conn, sub_a, lake_conn.execute(LATEST_SNAPSHOT).fetchall()[0][0])
    assert lines_as_of(lake_conn, sub_a, revision_lines_snapshot(lake_conn, sub_a, 1)) != now_lines
    with pytest.raises(LookupError):
        revision_lines_snapshot(lake_conn, sub_a, 5)


def test_preview_shows_what_the_close_then_records_and_writes_nothing(
    lake_conn: duckdb.DuckDBPyConnection,
) -> None:
    catalog = billing_catalog()
    store_usage(lake_conn)
    close(lake_conn, catalog, AFTER, run_id="run-1")
    for minute in range(10):
        stripe(lake_conn, "api_call", "cus_a", f"2026-03-01 20:{minute:02d}:00")
    stripe(lake_conn, "api_call", "cus_b", "2026-03-01 21:00:00")
    before = lake_conn.execute(LATEST_SNAPSHOT).fetchall()[0][0]

    preview = preview_close(lake_conn, catalog, CLOSE, now=AFTER)

    assert lake_conn.execute(LATEST_SNAPSHOT).fetchall()[0][0] == before
    assert preview.snapshot_id == before
    assert (preview.periods, preview.invoices, preview.lines) == (4, 3, 8)
    assert [r.subscription_id for r in preview.revisions] == ["sub_a", "sub_b"]
    close(lake_conn, catalog, AFTER, run_id="run-2")
    stored = tuple(stored_revisions(lake_conn, r.invoice_id)[-1] for r in preview.revisions)
    assert stored == preview.revisions
    assert preview_close(lake_conn, catalog, CLOSE, now=AFTER).revisions == ()
