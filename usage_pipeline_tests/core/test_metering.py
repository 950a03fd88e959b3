"""Metering a close date: meter matching, aggregations, customer -> subscription routing, exceptions."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import duckdb
import pytest

from usage_pipeline.core.catalog.model import Catalog
from usage_pipeline.core.metering.meter import MeteringResult, close_metering

CLOSE = date(2026, 3, 2)  # daily periods [03-01, 03-02) close on this date
AFTER = datetime(2026, 3, 3, tzinfo=UTC)
DAILY = {"started_at": "2026-01-01T00:00:00Z", "billing_period_unit": "day"}
_rows = itertools.count(1)


def make_catalog(
    meters: list[dict[str, Any]], prices: list[dict[str, Any]], subs: list[dict[str, Any]]
) -> Catalog:
    subscriptions = [{"currency": "USD", **DAILY, **s} for s in subs]
    priced = [{"currency": "USD", **p} for p in prices]
    return Catalog.model_validate({"meters": meters, "prices": priced, "subscriptions": subscriptions})


@pytest.fixture
def conn(lake_conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh lake (SQLite catalog, Parquet files in tmp_path): the storage the pipeline uses."""
    yield lake_conn


def stripe(conn: duckdb.DuckDBPyConnection, name: str, customer: str, ts: str, **props: Any) -> str:
    return _insert(conn, "stripe", ts, props, event_name=name, customer_id=customer)


def chargebee(conn: duckdb.DuckDBPyConnection, sub: str, ts: str, **props: Any) -> str:
    return _insert(conn, "chargebee", ts, props, subscription_id=sub)


def _insert(
    conn: duckdb.DuckDBPyConnection,
    layout: str,
    ts: str,
    props: dict[str, Any],
    *,
    event_name: str | None = None,
    customer_id: str | None = None,
    subscription_id: str | None = None,
) -> str:
    ingested_at = props.pop("ingested_at", datetime(2026, 3, 1, 23, 0))
    source_file = props.pop("source_file", "incoming/usage.csv")
    row = next(_rows)
    event_id = f"evt_{row}"
    conn.execute(
        "INSERT INTO usage_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'etag', ?, ?)",
        [
            event_id,
            layout,
            event_name,
            customer_id,
            subscription_id,
            ts,
            json.dumps(props),
            source_file,
            row,
            ingested_at,
        ],
    )
    return event_id


def usage(conn: duckdb.DuckDBPyConnection, day: date = CLOSE) -> dict[tuple[str, str], tuple[Decimal, int]]:
    rows = conn.execute(
        "SELECT subscription_id, meter_id, quantity, event_count FROM meter_usage WHERE close_date = ?", [day]
    ).fetchall()
    return {(sub, meter): (quantity, count) for sub, meter, quantity, count in rows}


def exceptions(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str | None]]:
    return sorted(
        conn.execute("SELECT code, event_id, meter_id FROM usage_exceptions").fetchall(),
        key=lambda r: (r[0], r[1], r[2] or ""),
    )


def meter(conn: duckdb.DuckDBPyConnection, catalog: Catalog, day: date = CLOSE) -> MeteringResult:
    return close_metering(conn, catalog, day, now=AFTER)


def test_every_aggregation(conn: duckdb.DuckDBPyConnection) -> None:
    aggregations = ["count", "sum", "max", "min", "latest", "unique_count"]
    catalog = make_catalog(
        [{"id": a, "event_name": "reading", "aggregation": a} for a in aggregations],
        [{"id": f"p_{a}", "meter": a, "model": "per_unit", "unit_amount": "1"} for a in aggregations],
        [{"id": "sub", "customer_id": "cus", "price_ids": [f"p_{a}" for a in aggregations]}],
    )
    stripe(conn, "reading", "cus", "2026-03-01 01:00:00", value="2.5")
    stripe(conn, "reading", "cus", "2026-03-01 03:00:00", value="10")
    stripe(conn, "reading", "cus", "2026-03-01 02:00:00", value="0.000000000001")
    stripe(conn, "reading", "cus", "2026-03-01 00:30:00", value="10")

    meter(conn, catalog)

    got = usage(conn)
    assert got[("sub", "count")] == (Decimal(4), 4)
    assert got[("sub", "sum")] == (Decimal("22.500000000001"), 4)
    assert got[("sub", "max")] == (Decimal(10), 4)
    assert got[("sub", "min")] == (Decimal("0.000000000001"), 4)
    assert got[("sub", "latest")] == (Decimal(10), 4)  # the 03:00 event
    assert got[("sub", "unique_count")] == (Decimal(3), 4)  # "2.5", "10", "0.000000000001"


def test_latest_tie_on_timestamp_goes_to_the_last_ingested(conn: duckdb.DuckDBPyConnection) -> None:
    catalog = make_catalog(
        [{"id": "gauge", "event_name": "gauge", "aggregation": "latest"}],
        [{"id": "p", "meter": "gauge", "model": "per_unit", "unit_amount": "1"}],
        [{"id": "sub", "customer_id": "cus", "price_ids": ["p"]}],
    )
    stripe(conn, "gauge", "cus", "2026-03-01 05:00:00", value="7", ingested_at=datetime(2026, 3, 1, 9))
    stripe(conn, "gauge", "cus", "2026-03-01 05:00:00", value="3", ingested_at=datetime(2026, 3, 1, 8))
    stripe(conn, "gauge", "cus", "2026-03-01 04:00:00", value="99", ingested_at=datetime(2026, 3, 1, 10))

    meter(conn, catalog)

    assert usage(conn)[("sub", "gauge")] == (Decimal(7), 3)


def test_chargebee_filters_with_lists_and_several_properties(conn: duckdb.DuckDBPyConnection) -> None:
    catalog = make_catalog(
        [
            {
                "id": "storage",
                "filters": {"feature": ["storage", "disk"]},
                "aggregation": "sum",
                "value_property": "gb",
            },
            {
                "id": "eu_seats",
                "filters": {"feature": "seats", "region": "eu"},
                "aggregation": "unique_count",
                "value_property": "user_id",
            },
        ],
        [
            {"id": "p_storage", "meter": "storage", "model": "per_unit", "unit_amount": "1"},
            {"id": "p_seats", "meter": "eu_seats", "model": "per_unit", "unit_amount": "1"},
        ],
        [{"id": "sub_1", "customer_id": "cus", "price_ids": ["p_storage", "p_seats"]}],
    )
    chargebee(conn, "sub_1", "2026-03-01 01:00:00", feature="storage", gb=12.5)
    chargebee(conn, "sub_1", "2026-03-01 02:00:00", feature="disk", gb=1)
    other = chargebee(conn, "sub_1", "2026-03-01 02:00:00", feature="cpu", gb=100)
    chargebee(conn, "sub_1", "2026-03-01 03:00:00", feature="seats", region="eu", user_id="u1")
    chargebee(conn, "sub_1", "2026-03-01 03:00:00", feature="seats", region="eu", user_id="u1")
    chargebee(conn, "sub_1", "2026-03-01 03:00:00", feature="seats", region="eu", user_id=2)
    us = chargebee(conn, "sub_1", "2026-03-01 03:00:00", feature="seats", region="us", user_id="u9")

    meter(conn, catalog)

    got = usage(conn)
    assert got[("sub_1", "storage")] == (Decimal("13.5"), 2)
    assert got[("sub_1", "eu_seats")] == (Decimal(2), 3)
    assert exceptions(conn) == [("no_meter", other, None), ("no_meter", us, None)]


def test_event_name_and_filters_must_both_match(conn: duckdb.DuckDBPyConnection) -> None:
    catalog = make_catalog(
        [{"id": "eu_calls", "event_name": "api_call", "filters": {"region": "eu"}, "aggregation": "count"}],
        [{"id": "p", "meter": "eu_calls", "model": "per_unit", "unit_amount": "1"}],
        [{"id": "sub", "customer_id": "cus", "price_ids": ["p"]}],
    )
    stripe(conn, "api_call", "cus", "2026-03-01 01:00:00", region="eu")
    us = stripe(conn, "api_call", "cus", "2026-03-01 01:00:00", region="us")
    other = stripe(conn, "other", "cus", "2026-03-01 01:00:00", region="eu")
    chargebee_event = chargebee(conn, "sub", "2026-03-01 01:00:00", region="eu")

    meter(conn, catalog)

    assert usage(conn) == {("sub", "eu_calls"): (Decimal(1), 1)}
    assert [c for c, *_ in exceptions(conn)] == ["no_meter"] * 3
    assert {e for _, e, _ in exceptions(conn)} == {us, other, chargebee_event}


RESOLUTION_METERS = [{"id": "calls", "event_name": "api_call", "aggregation": "count"}]
RESOLUTION_PRICES = [
    {"id": "p_calls", "meter": "calls", "model": "per_unit", "unit_amount": "1"},
    {"id": "base", "model": "flat_fee", "amount": "5"},
]


def test_stripe_customer_goes_to_the_earliest_active_subscription_pricing_the_meter(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    catalog = make_catalog(
        RESOLUTION_METERS,
        RESOLUTION_PRICES,
        [
            # Earliest but cancelled before noon on 03-01.
            {
                "id": "sub_old",
                "customer_id": "cus",
                "price_ids": ["p_calls"],
                "started_at": "2025-12-01T00:00:00Z",
                "cancelled_at": "2026-03-01T12:00:00Z",
            },
            # Same started_at: the smallest id wins.
            {"id": "sub_b", "customer_id": "cus", "price_ids": ["p_calls"]},
            {"id": "sub_a", "customer_id": "cus", "price_ids": ["p_calls"]},
            # Earliest of all, but holds no price on the meter.
            {
                "id": "sub_flat",
                "customer_id": "cus",
                "price_ids": ["base"],
                "started_at": "2025-01-01T00:00:00Z",
            },
        ],
    )
    stripe(conn, "api_call", "cus", "2026-03-01 08:00:00")
    stripe(conn, "api_call", "cus", "2026-03-01 11:59:59")
    stripe(conn, "api_call", "cus", "2026-03-01 12:00:00")

    result = meter(conn, catalog)

    # sub_old's last period ends at its cancellation (12:00 on 03-01), not on CLOSE: close that day too.
    assert usage(conn) == {("sub_a", "calls"): (Decimal(1), 1)}
    meter(conn, catalog, date(2026, 3, 1))
    assert usage(conn, date(2026, 3, 1)) == {("sub_old", "calls"): (Decimal(2), 2)}
    assert result.exceptions == {}


def test_stripe_event_before_any_subscription_started(conn: duckdb.DuckDBPyConnection) -> None:
    catalog = make_catalog(
        RESOLUTION_METERS,
        RESOLUTION_PRICES,
        [
            {
                "id": "sub",
                "customer_id": "cus",
                "price_ids": ["p_calls"],
                "started_at": "2026-03-01T12:00:00Z",
                "billing_anchor": "2026-01-01T00:00:00Z",
            },
            # Another period closing the same day, from midnight: the window covers the early event.
            {"id": "sub_other", "customer_id": "cus_other", "price_ids": ["p_calls"]},
        ],
    )
    early = stripe(conn, "api_call", "cus", "2026-03-01 11:00:00")
    stripe(conn, "api_call", "cus", "2026-03-01 13:00:00")

    meter(conn, catalog)

    assert usage(conn) == {("sub", "calls"): (Decimal(1), 1)}
    assert exceptions(conn) == [("subscription_not_found", early, None)]


def test_each_exception_code(conn: duckdb.DuckDBPyConnection) -> None:
    catalog = make_catalog(
        [
            {"id": "calls", "event_name": "api_call", "aggregation": "count"},
            {"id": "tokens", "event_name": "tokens", "aggregation": "sum"},
            {
                "id": "storage",
                "filters": {"feature": "storage"},
                "aggregation": "max",
                "value_property": "gb",
            },
        ],
        [
            {"id": "p_calls", "meter": "calls", "model": "per_unit", "unit_amount": "1"},
            {"id": "p_tokens", "meter": "tokens", "model": "per_unit", "unit_amount": "1"},
            {"id": "p_storage", "meter": "storage", "model": "per_unit", "unit_amount": "1"},
        ],
        [
            {"id": "sub", "customer_id": "cus", "price_ids": ["p_tokens", "p_storage"]},
        ],
    )
    ts = "2026-03-01 10:00:00"
    unknown_customer = stripe(conn, "tokens", "cus_unknown", ts, value="1")
    no_price = stripe(conn, "api_call", "cus", ts)  # the customer has no subscription pricing calls
    no_meter = stripe(conn, "page_view", "cus", ts)
    missing_value = stripe(conn, "tokens", "cus", ts, other="1")
    invalid_value = stripe(conn, "tokens", "cus", ts, value="12abc")
    missing_sub = chargebee(conn, "sub_not_yet", ts, feature="storage", gb=3)
    chargebee_invalid = chargebee(conn, "sub", ts, feature="storage", gb="lots")
    stripe(conn, "tokens", "cus", ts, value="4")

    result = meter(conn, catalog)

    assert exceptions(conn) == sorted(
        [
            ("customer_not_found", unknown_customer, None),
            ("subscription_not_found", no_price, None),
            ("subscription_not_found", missing_sub, None),
            ("no_meter", no_meter, None),
            ("meter_event_value_not_found", missing_value, "tokens"),
            ("invalid_value", invalid_value, "tokens"),
            ("invalid_value", chargebee_invalid, "storage"),
        ],
        key=lambda r: (r[0], r[1], r[2] or ""),
    )
    assert result.exceptions == {
        "customer_not_found": 1,
        "subscription_not_found": 2,
        "no_meter": 1,
        "meter_event_value_not_found": 1,
        "invalid_value": 2,
    }
    assert usage(conn) == {("sub", "tokens"): (Decimal(4), 1)}
    detail = conn.execute(
        "SELECT detail, source_file, source_row FROM usage_exceptions WHERE event_id = ?", [missing_sub]
    ).fetchall()[0]
    assert "sub_not_yet is not in the catalog" in detail[0]
    assert detail[1] == "incoming/usage.csv"


def test_chargebee_usage_of_a_subscription_added_later_is_billed_on_reclose(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    meters = [
        {"id": "storage", "filters": {"feature": "storage"}, "aggregation": "max", "value_property": "gb"}
    ]
    prices = [{"id": "p", "meter": "storage", "model": "per_unit", "unit_amount": "1"}]
    before = make_catalog(meters, prices, [{"id": "sub_1", "customer_id": "c1", "price_ids": ["p"]}])
    event = chargebee(conn, "sub_2", "2026-03-01 10:00:00", feature="storage", gb=40)

    meter(conn, before)
    assert usage(conn) == {}
    assert exceptions(conn) == [("subscription_not_found", event, None)]

    after = make_catalog(
        meters,
        prices,
        [
            {"id": "sub_1", "customer_id": "c1", "price_ids": ["p"]},
            {"id": "sub_2", "customer_id": "c2", "price_ids": ["p"]},
        ],
    )
    meter(conn, after)
    assert usage(conn) == {("sub_2", "storage"): (Decimal(40), 1)}
    assert exceptions(conn) == []


def test_period_bounds_start_inclusive_end_exclusive(conn: duckdb.DuckDBPyConnection) -> None:
    catalog = make_catalog(
        RESOLUTION_METERS, RESOLUTION_PRICES, [{"id": "sub", "customer_id": "cus", "price_ids": ["p_calls"]}]
    )
    stripe(conn, "api_call", "cus", "2026-03-01 00:00:00")
    stripe(conn, "api_call", "cus", "2026-03-01 23:59:59.999")
    stripe(conn, "api_call", "cus", "2026-03-02 00:00:00")  # next period
    stripe(conn, "api_call", "cus", "2026-02-28 23:59:59.999")  # previous period

    result = meter(conn, catalog)

    assert usage(conn) == {("sub", "calls"): (Decimal(2), 2)}
    assert result.window == (datetime(2026, 3, 1), datetime(2026, 3, 2))
    lineage = conn.execute("SELECT count(*) FROM metered_events WHERE subscription_id = 'sub'").fetchall()
    assert lineage == [(2,)]


def test_periods_not_over_are_skipped_and_reported(conn: duckdb.DuckDBPyConnection) -> None:
    catalog = make_catalog(
        RESOLUTION_METERS,
        RESOLUTION_PRICES,
        [
            {"id": "midnight", "customer_id": "c1", "price_ids": ["p_calls"]},
            {
                "id": "afternoon",
                "customer_id": "c2",
                "price_ids": ["p_calls"],
                "started_at": "2026-01-01T15:00:00Z",
            },
        ],
    )
    result = close_metering(conn, catalog, CLOSE, now=datetime(2026, 3, 2, 9, 0, tzinfo=UTC))

    assert result.periods_closed == 1
    assert [p.subscription_id for p in result.not_over] == ["afternoon"]
    closed = conn.execute("SELECT subscription_id FROM closed_periods").fetchall()
    assert closed == [("midnight",)]


def test_reclosing_replaces_the_date_rows(conn: duckdb.DuckDBPyConnection) -> None:
    catalog = make_catalog(
        RESOLUTION_METERS, RESOLUTION_PRICES, [{"id": "sub", "customer_id": "cus", "price_ids": ["p_calls"]}]
    )
    stripe(conn, "api_call", "cus", "2026-03-01 10:00:00")
    stripe(conn, "nothing", "cus", "2026-03-01 10:00:00")
    meter(conn, catalog)
    stripe(conn, "api_call", "cus", "2026-03-01 11:00:00")
    meter(conn, catalog)

    counts = conn.execute(
        "SELECT (SELECT count(*) FROM closed_periods), (SELECT count(*) FROM meter_usage), "
        "(SELECT count(*) FROM metered_events), (SELECT count(*) FROM usage_exceptions)"
    ).fetchall()
    assert counts == [(1, 1, 2, 1)]
    assert usage(conn) == {("sub", "calls"): (Decimal(2), 2)}
