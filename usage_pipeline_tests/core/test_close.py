"""Period close: line items and pending invoices, re-close, late usage and the lineage view."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import duckdb

from usage_pipeline.core.billing.close import BillingResult, close_billing
from usage_pipeline.core.billing.late import find_late_usage
from usage_pipeline.core.catalog.model import Catalog
from usage_pipeline.core.metering.meter import MeteringResult, close_metering
from usage_pipeline_tests.core.test_metering import AFTER, CLOSE, chargebee, conn, make_catalog, stripe

__all__ = ["conn"]  # the DuckDB fixture, shared with test_metering

TIERED = [
    {"up_to": "10", "unit_amount": "10", "flat_amount": "2"},
    {"up_to": "20", "unit_amount": "5", "flat_amount": "3"},
    {"up_to": None, "unit_amount": "5", "flat_amount": "3"},
]
VOLUME = [
    {"up_to": "100", "unit_amount": "2", "flat_amount": "10"},
    {"up_to": "200", "unit_amount": "1"},
    {"up_to": None, "unit_amount": "0.5", "flat_amount": "50"},
]
STAIRS = [{"up_to": "5", "flat_amount": "25"}, {"up_to": None, "flat_amount": "90"}]


def close_day(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, close_date: date, now: datetime
) -> tuple[MeteringResult, BillingResult]:
    """What the period_close job does, without Dagster: meter the date (metering asset), then rate it
    (billing asset)."""
    metering = close_metering(conn, catalog, close_date, now=now)
    return metering, close_billing(conn, catalog, close_date, now=now)


def billing_catalog() -> Catalog:
    return make_catalog(
        [
            {"id": "calls", "event_name": "api_call", "aggregation": "count"},
            {"id": "tokens", "event_name": "tokens", "aggregation": "sum"},
            {
                "id": "storage",
                "filters": {"feature": "storage"},
                "aggregation": "max",
                "value_property": "gb",
            },
            {
                "id": "seats",
                "filters": {"feature": "seats"},
                "aggregation": "unique_count",
                "value_property": "user_id",
            },
        ],
        [
            {"id": "base", "model": "flat_fee", "amount": "49.00"},
            {
                "id": "calls_pkg",
                "meter": "calls",
                "model": "package",
                "package_size": "10",
                "package_amount": "100",
            },
            {"id": "tokens_tiered", "meter": "tokens", "model": "tiered", "tiers": TIERED},
            {"id": "storage_volume", "meter": "storage", "model": "volume", "tiers": VOLUME},
            {"id": "seats_stairs", "meter": "seats", "model": "stairstep", "tiers": STAIRS},
            {
                "id": "calls_jpy",
                "meter": "calls",
                "currency": "JPY",
                "model": "per_unit",
                "unit_amount": "0.25",
            },
        ],
        [
            {
                "id": "sub_a",
                "customer_id": "cus_a",
                "price_ids": ["base", "calls_pkg", "tokens_tiered", "storage_volume", "seats_stairs"],
            },
            {"id": "sub_b", "customer_id": "cus_b", "price_ids": ["base", "calls_pkg"]},
            {"id": "sub_c", "customer_id": "cus_c", "price_ids": ["tokens_tiered"]},
            {"id": "sub_d", "customer_id": "cus_d", "currency": "JPY", "price_ids": ["calls_jpy"]},
        ],
    )


def store_usage(conn: duckdb.DuckDBPyConnection) -> None:
    for minute in range(21):
        stripe(conn, "api_call", "cus_a", f"2026-03-01 10:{minute:02d}:00", source_file="incoming/calls.csv")
    stripe(conn, "tokens", "cus_a", "2026-03-01 11:00:00", value="10")
    stripe(conn, "tokens", "cus_a", "2026-03-01 12:00:00", value="11")
    chargebee(conn, "sub_a", "2026-03-01 13:00:00", feature="storage", gb=100.5)
    chargebee(conn, "sub_a", "2026-03-01 14:00:00", feature="storage", gb=50)
    for user in ("u1", "u2", "u3", "u1"):
        chargebee(conn, "sub_a", "2026-03-01 15:00:00", feature="seats", user_id=user)
    for _ in range(3):
        stripe(conn, "api_call", "cus_d", "2026-03-01 16:00:00")


def lines(conn: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    rows = conn.execute(
        "SELECT subscription_id, price_id, quantity, amount FROM invoice_line_items"
    ).fetchall()
    return {(sub, price): (quantity, amount) for sub, price, quantity, amount in rows}


def invoices(conn: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, Decimal, int, str]]:
    rows = conn.execute(
        "SELECT subscription_id, invoice_id, total, line_count, currency FROM pending_invoices"
    ).fetchall()
    return {sub: (invoice_id, total, n, currency) for sub, invoice_id, total, n, currency in rows}


def test_lines_and_invoices_for_every_pricing_model(conn: duckdb.DuckDBPyConnection) -> None:
    store_usage(conn)

    _, result = close_day(conn, billing_catalog(), CLOSE, now=AFTER)

    assert lines(conn) == {
        ("sub_a", "base"): (Decimal(1), Decimal("49.00")),
        ("sub_a", "calls_pkg"): (Decimal(21), Decimal("300.00")),  # 3 packages of 10
        ("sub_a", "tokens_tiered"): (Decimal(21), Decimal("163.00")),  # SPEC example
        ("sub_a", "storage_volume"): (Decimal("100.5"), Decimal("100.50")),  # SPEC example
        ("sub_a", "seats_stairs"): (Decimal(3), Decimal("25.00")),
        # sub_b: the flat fee always bills; its metered price had no events: no line.
        ("sub_b", "base"): (Decimal(1), Decimal("49.00")),
        ("sub_d", "calls_jpy"): (Decimal(3), Decimal(1)),  # 0.75 JPY rounds half-up to 1 yen
    }
    got = invoices(conn)
    assert set(got) == {"sub_a", "sub_b", "sub_d"}  # sub_c: only a metered price, no events: no invoice
    assert got["sub_a"][1:] == (Decimal("637.50"), 5, "USD")
    assert got["sub_d"][1:] == (Decimal(1), 1, "JPY")
    assert {(t.currency, t.total) for t in result.totals} == {("USD", Decimal("686.50")), ("JPY", Decimal(1))}
    tiers = json.loads(
        conn.execute("SELECT tiers FROM invoice_line_items WHERE price_id = 'tokens_tiered'").fetchall()[0][0]
    )
    assert [t["amount"] for t in tiers] == ["102", "53", "8"]
    assert conn.execute("SELECT DISTINCT status FROM invoice_line_items").fetchall() == [("pending",)]


def test_invoice_and_line_ids_are_deterministic(conn: duckdb.DuckDBPyConnection) -> None:
    store_usage(conn)
    close_day(conn, billing_catalog(), CLOSE, now=AFTER)

    invoice_id = invoices(conn)["sub_b"][0]
    # Documented formula: sha256 of "<subscription_id>|<period_end as %Y-%m-%dT%H:%M:%S.%fZ>".
    expected = "inv_" + hashlib.sha256(b"sub_b|2026-03-02T00:00:00.000000Z").hexdigest()[:20]
    assert invoice_id == expected
    line_id = conn.execute(
        "SELECT line_item_id FROM invoice_line_items WHERE subscription_id = 'sub_b'"
    ).fetchall()[0][0]
    assert line_id == "li_" + hashlib.sha256(f"{invoice_id}|base".encode()).hexdigest()[:20]


def test_reclose_keeps_ids_replaces_amounts_and_never_duplicates(conn: duckdb.DuckDBPyConnection) -> None:
    store_usage(conn)
    catalog = billing_catalog()
    close_day(conn, catalog, CLOSE, now=AFTER)
    ids_before = conn.execute("SELECT line_item_id, invoice_id FROM invoice_line_items ORDER BY 1").fetchall()

    close_day(conn, catalog, CLOSE, now=AFTER)
    assert conn.execute("SELECT line_item_id, invoice_id FROM invoice_line_items ORDER BY 1").fetchall() == (
        ids_before
    )

    # More usage, then the date is closed again: same ids, new amounts, still one row each.
    for minute in range(10):
        stripe(conn, "api_call", "cus_a", f"2026-03-01 20:{minute:02d}:00")
    close_day(conn, catalog, CLOSE, now=AFTER + timedelta(hours=1))

    assert conn.execute("SELECT line_item_id, invoice_id FROM invoice_line_items ORDER BY 1").fetchall() == (
        ids_before
    )
    assert lines(conn)[("sub_a", "calls_pkg")] == (Decimal(31), Decimal("400.00"))
    assert invoices(conn)["sub_a"][1] == Decimal("737.50")
    assert conn.execute("SELECT count(*) FROM pending_invoices").fetchall() == [(3,)]


def test_late_usage_is_reported_with_money_at_stake_then_billed_on_reclose(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    store_usage(conn)
    catalog = billing_catalog()
    closed_at = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    close_day(conn, catalog, CLOSE, now=closed_at)
    assert find_late_usage(conn, catalog).periods == ()

    # Files arriving after the close: 9 more calls for sub_a (21 -> 30, still 3 packages) and one for
    # sub_b, which had only its flat fee (new line of 100).
    for minute in range(9):
        stripe(
            conn, "api_call", "cus_a", f"2026-03-01 23:{minute:02d}:00", ingested_at=datetime(2026, 3, 2, 2)
        )
    stripe(conn, "api_call", "cus_b", "2026-03-01 23:30:00", ingested_at=datetime(2026, 3, 2, 2))
    # Ingested after the close but for the next period: not late for this close date.
    stripe(conn, "api_call", "cus_b", "2026-03-02 00:30:00", ingested_at=datetime(2026, 3, 2, 2))

    report = find_late_usage(conn, catalog)

    by_sub = {p.subscription_id: p for p in report.periods}
    assert set(by_sub) == {"sub_a", "sub_b"}
    assert by_sub["sub_a"].late_events == 9
    assert by_sub["sub_a"].at_stake == Decimal(0)
    assert by_sub["sub_b"].late_events == 1
    assert (by_sub["sub_b"].invoiced_total, by_sub["sub_b"].at_stake) == (Decimal("49.00"), Decimal("100.00"))
    assert report.at_stake_by_currency == {"USD": Decimal("100.00")}
    assert report.close_dates == (CLOSE,)
    assert invoices(conn)["sub_b"][1] == Decimal("49.00")  # detection changes nothing stored

    close_day(conn, catalog, CLOSE, now=datetime(2026, 3, 2, 3, 0, tzinfo=UTC))

    assert invoices(conn)["sub_b"][1:3] == (Decimal("149.00"), 2)
    assert find_late_usage(conn, catalog).periods == ()


def test_line_item_events_view_lists_the_events_and_files_behind_a_line(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    store_usage(conn)
    close_day(conn, billing_catalog(), CLOSE, now=AFTER)

    rows = conn.execute(
        "SELECT e.event_id, e.source_file, e.source_row FROM line_item_events AS e "
        "JOIN invoice_line_items AS li USING (line_item_id) "
        "WHERE li.subscription_id = 'sub_a' AND li.price_id = 'calls_pkg'"
    ).fetchall()
    assert len(rows) == 21
    assert {f for _, f, _ in rows} == {"incoming/calls.csv"}
    assert len({r for *_, r in rows}) == 21
    flat = conn.execute(
        "SELECT count(*) FROM line_item_events AS e JOIN invoice_line_items AS li USING (line_item_id) "
        "WHERE li.price_id = 'base'"
    ).fetchall()
    assert flat == [(0,)]


def test_a_date_with_nothing_to_close(conn: duckdb.DuckDBPyConnection) -> None:
    catalog = billing_catalog()
    metering, result = close_day(conn, catalog, date(2025, 1, 1), now=AFTER)
    assert (metering.periods_closed, result.invoices, result.lines) == (0, 0, 0)
