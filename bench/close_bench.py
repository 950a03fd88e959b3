"""Benchmark of a period close: N subscriptions and M events closing on one day, metered + rated + written.

    .venv/bin/python bench/close_bench.py                         # 1M/10k, 5M/50k, 10M/100k
    .venv/bin/python bench/close_bench.py --scale 10000000:100000 # one size

The DuckDB file is built first (events generated inside DuckDB with range() and hash(): fast), then the
close of the day is timed: metering (close_metering) + rating (close_billing), both with their writes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from usage_pipeline.core.billing.close import close_billing
from usage_pipeline.core.catalog.model import Catalog
from usage_pipeline.core.metering.meter import close_metering
from usage_pipeline.core.storage.connection import open_database

CLOSE_DATE = date(2026, 3, 15)
DAY_MS = 86_400_000

METERS = [
    {"id": "api_calls", "event_name": "api_call", "aggregation": "count"},
    {"id": "tokens", "event_name": "llm_tokens", "aggregation": "sum"},
    {"id": "gpu_gauge", "event_name": "gpu_gauge", "aggregation": "latest"},
    {"id": "storage_gb", "filters": {"feature": "storage"}, "aggregation": "max", "value_property": "gb"},
    {
        "id": "seats",
        "filters": {"feature": "seats"},
        "aggregation": "unique_count",
        "value_property": "user_id",
    },
]
TIERS = [
    {"up_to": "1000", "unit_amount": "0.002"},
    {"up_to": None, "unit_amount": "0.0015", "flat_amount": "5"},
]
PRICES = [
    {"id": "base", "currency": "USD", "model": "flat_fee", "amount": "49.00"},
    {
        "id": "api",
        "meter": "api_calls",
        "currency": "USD",
        "model": "package",
        "package_size": "10",
        "package_amount": "1.50",
    },
    {"id": "tok", "meter": "tokens", "currency": "USD", "model": "tiered", "tiers": TIERS},
    {"id": "gpu", "meter": "gpu_gauge", "currency": "USD", "model": "per_unit", "unit_amount": "0.37"},
    {"id": "sto", "meter": "storage_gb", "currency": "USD", "model": "volume", "tiers": TIERS},
    {
        "id": "sea",
        "meter": "seats",
        "currency": "USD",
        "model": "stairstep",
        "tiers": [{"up_to": "5", "flat_amount": "25"}, {"up_to": None, "flat_amount": "90"}],
    },
]
STRIPE_PRICES = ["base", "api", "tok", "gpu"]
CHARGEBEE_PRICES = ["base", "sto", "sea"]


def build_catalog(subscriptions: int) -> Catalog:
    """Even subscriptions get Stripe-layout usage, odd ones Chargebee; i % 4 < 2 are daily, the rest
    monthly anchored on the close date's day of month: every period ends on CLOSE_DATE."""
    daily_start = datetime(2026, 1, 1, tzinfo=UTC)
    monthly_start = datetime(2026, 1, CLOSE_DATE.day, tzinfo=UTC)
    subs = [
        {
            "id": f"sub_{i:07d}",
            "customer_id": f"cus_{i:07d}",
            "currency": "USD",
            "price_ids": STRIPE_PRICES if i % 2 == 0 else CHARGEBEE_PRICES,
            "started_at": daily_start if i % 4 < 2 else monthly_start,
            "billing_period_unit": "day" if i % 4 < 2 else "month",
        }
        for i in range(subscriptions)
    ]
    return Catalog.model_validate({"meters": METERS, "prices": PRICES, "subscriptions": subs})


# Events of subscription s = i % subs, inside the period of s that ends on CLOSE_DATE.
GENERATE_EVENTS = """
    INSERT INTO usage_events
    WITH base AS (
        SELECT i, i % $subs AS s, hash(i) AS h FROM range($events) AS t(i)),
    shaped AS (
        SELECT i, s, h, s % 2 = 0 AS stripe, (i // $subs) % 3 AS kind,
               CASE WHEN s % 4 < 2 THEN $day_start + to_milliseconds(CAST(h % $day_ms AS BIGINT))
                    ELSE $month_start + to_milliseconds(CAST(h % $month_ms AS BIGINT)) END AS ts
        FROM base)
    SELECT 'evt_' || i,
           CASE WHEN stripe THEN 'stripe' ELSE 'chargebee' END,
           CASE WHEN stripe THEN ['api_call', 'llm_tokens', 'gpu_gauge'][kind + 1] END,
           CASE WHEN stripe THEN printf('cus_%07d', s) END,
           CASE WHEN NOT stripe THEN printf('sub_%07d', s) END,
           ts,
           CASE WHEN stripe AND kind = 0 THEN '{}'
                WHEN stripe THEN '{"value":"' || (h % 5000) / 100 || '","region":"eu"}'
                WHEN kind < 2 THEN '{"feature":"storage","gb":' || (h % 20000) / 10 || '}'
                ELSE '{"feature":"seats","user_id":"u' || h % 12 || '"}' END,
           'bench/incoming/part-' || lpad(CAST(i // 1000000 AS VARCHAR), 4, '0') || '.jsonl',
           'etag-' || i // 1000000, i % 1000000 + 1, ts + INTERVAL 10 MINUTE
    FROM shaped
"""


@dataclass(frozen=True)
class BenchResult:
    events: int
    subscriptions: int
    build_seconds: float
    metering_seconds: float
    rating_seconds: float
    invoices: int
    lines: int

    @property
    def close_seconds(self) -> float:
        return self.metering_seconds + self.rating_seconds


def run(events: int, subscriptions: int, path: Path) -> BenchResult:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_suffix(path.suffix + ".wal")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    catalog = build_catalog(subscriptions)
    conn = open_database(str(path))
    day_start = datetime.combine(CLOSE_DATE - timedelta(days=1), datetime.min.time())
    month_start = datetime(2026, 2, CLOSE_DATE.day)
    conn.execute(
        GENERATE_EVENTS,
        {
            "subs": subscriptions,
            "events": events,
            "day_start": day_start,
            "day_ms": DAY_MS,
            "month_start": month_start,
            "month_ms": (datetime.combine(CLOSE_DATE, datetime.min.time()) - month_start)
            // timedelta(milliseconds=1),
        },
    )
    conn.execute("CHECKPOINT")
    conn.close()
    build = time.perf_counter() - started

    # The close runs like a period_close run: a fresh connection from open_database, configured as in
    # production (DuckDB's buffer pool empty).
    conn = open_database(str(path))
    now = datetime.combine(CLOSE_DATE + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    t0 = time.perf_counter()
    metering = close_metering(conn, catalog, CLOSE_DATE, now=now, run_id="bench")
    t1 = time.perf_counter()
    billing = close_billing(conn, catalog, CLOSE_DATE, now=now)
    t2 = time.perf_counter()
    (lineage,) = conn.execute("SELECT count(*) FROM metered_events").fetchall()[0]
    conn.close()
    assert metering.events_metered == events, (metering.events_metered, events, metering.exceptions)
    assert lineage == events, ("metered_events rows", lineage, events)
    return BenchResult(events, subscriptions, build, t1 - t0, t2 - t1, billing.invoices, billing.lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale",
        action="append",
        help="EVENTS:SUBSCRIPTIONS (repeatable); default 1000000:10000, 5000000:50000, 10000000:100000",
    )
    parser.add_argument("--db", default=str(Path(__file__).parent / "out" / "close_bench.duckdb"))
    args = parser.parse_args(argv)
    scales = args.scale or ["1000000:10000", "5000000:50000", "10000000:100000"]
    print(
        f"{'events':>11} {'subs':>8} {'build s':>8} {'meter s':>8} {'rate s':>7} {'close s':>8} "
        f"{'events/s':>11} {'invoices':>9} {'lines':>8}"
    )
    for scale in scales:
        events, subs = (int(x) for x in scale.split(":"))
        r = run(events, subs, Path(args.db))
        print(
            f"{r.events:>11,} {r.subscriptions:>8,} {r.build_seconds:>8.1f} {r.metering_seconds:>8.2f} "
            f"{r.rating_seconds:>7.2f} {r.close_seconds:>8.2f} {r.events / r.close_seconds:>11,.0f} "
            f"{r.invoices:>9,} {r.lines:>8,}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
