"""Benchmark of a period close: N subscriptions and M events closing on one day, metered + rated + written.

    .venv/bin/python bench/close_bench.py                          # 10M events / 100k subscriptions
    .venv/bin/python bench/close_bench.py --scale 1000000:10000 --scale 5000000:50000
    .venv/bin/python bench/close_bench.py --skip-native            # the lake only

The store is built first (events generated inside DuckDB with range() and hash(): fast), then the close
of the day is timed on a fresh connection: metering (close_metering) + rating (close_billing), both with
their writes. The store is the lake (DuckLake: SQLite catalog + Parquet, opened by lake.connect as the
product does); for comparison the same metering runs on a native DuckDB file (duckdb.connect +
ensure_schema), where the product's code falls back to plain transactions. Rating is not timed there:
each invoice revision records the lake snapshot its close committed (SPEC 5), which a native file has
not. Target: the close of 10M events / 100k subscriptions on the lake under 10 s.

After the timed close, cheap checks that it did the whole job: every event metered, one lineage row per
event in metered_events, no usage exception; on the lake one invoice per subscription, whose lines are
its flat fee plus one per meter_usage row.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from usage_pipeline.core.billing.close import BillingResult, close_billing
from usage_pipeline.core.catalog.model import Catalog
from usage_pipeline.core.metering.meter import MeteringResult, close_metering
from usage_pipeline.core.storage.lake import Lake, connect, transaction
from usage_pipeline.core.storage.schema import ensure_schema

CLOSE_DATE = date(2026, 3, 15)
DAY_MS = 86_400_000
TARGET_SECONDS = 10.0  # the close of 10M events / 100k subscriptions on the lake
TARGET_SCALE = (10_000_000, 100_000)
STORAGE_LABELS = {"lake": "lake (SQLite catalog + Parquet)", "native": "native DuckDB file"}

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
    open_seconds: float
    metering_seconds: float
    rating_seconds: float
    invoices: int
    lines: int
    # Set when the close was stopped at the time budget: the step it was in.
    interrupted_in: str | None = None
    # Set when rating was not run (a native file): why.
    rating_skipped: str | None = None

    @property
    def close_seconds(self) -> float:
        return self.metering_seconds + self.rating_seconds


@contextmanager
def open_store(kind: str, root: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh connection to the store under `root`: the lake through lake.connect, or a DuckDB file."""
    if kind == "lake":
        lake = Lake(catalog=f"sqlite:{root / 'catalog.sqlite'}", data_path=f"{root / 'data'}/")
        with connect(lake) as conn:
            yield conn
        return
    conn = duckdb.connect(str(root / "usage.duckdb"))
    try:
        ensure_schema(conn)
        yield conn
    finally:
        conn.close()


def build(events: int, subscriptions: int, root: Path, kind: str) -> float:
    """A fresh store under `root` holding the events; returns seconds."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.perf_counter()
    day_start = datetime.combine(CLOSE_DATE - timedelta(days=1), datetime.min.time())
    month_start = datetime(2026, 2, CLOSE_DATE.day)
    with open_store(kind, root) as conn, transaction(conn):
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
    if kind == "native":
        with open_store(kind, root) as conn:
            conn.execute("CHECKPOINT")  # a lake has nothing to checkpoint (it would run maintenance)
    return time.perf_counter() - started


RATING_NEEDS_LAKE = "rating needs the lake: each invoice revision records its snapshot"


def check(
    conn: duckdb.DuckDBPyConnection,
    events: int,
    subscriptions: int,
    metering: MeteringResult,
    billing: BillingResult | None,
) -> None:
    """The close did the whole job (cheap counts, after the timed part): every event metered once, one
    lineage row per event, no exception; one invoice per subscription with its flat fee plus one line
    per usage row (each meter has one price per subscription in this catalog)."""
    (lineage,) = conn.execute(
        "SELECT count(*) FROM metered_events WHERE close_date = $d", {"d": CLOSE_DATE}
    ).fetchall()[0]
    assert metering.events_metered == events, (metering.events_metered, events, metering.exceptions)
    assert lineage == events, ("metered_events rows", lineage, events)
    assert not metering.exceptions, metering.exceptions
    assert metering.periods_closed == subscriptions, (metering.periods_closed, subscriptions)
    if billing is None:
        return
    (lines,) = conn.execute(
        "SELECT count(*) FROM invoice_line_items WHERE close_date = $d", {"d": CLOSE_DATE}
    ).fetchall()[0]
    assert billing.invoices == subscriptions, ("invoices", billing.invoices, subscriptions)
    assert billing.lines == lines == subscriptions + metering.usage_rows, (
        "lines",
        billing.lines,
        lines,
        subscriptions + metering.usage_rows,
    )


def run(
    events: int, subscriptions: int, root: Path, kind: str = "lake", budget: float = 120.0
) -> BenchResult:
    """Build the store, then time the close on a fresh connection (as a period_close run: DuckDB's
    buffer pool empty). Opening the connection is reported apart (it does not grow with the close). A
    close still running after `budget` seconds is interrupted and reported as such. On a native file only
    the metering is timed (see RATING_NEEDS_LAKE)."""
    catalog = build_catalog(subscriptions)
    build_seconds = build(events, subscriptions, root, kind)
    now = datetime.combine(CLOSE_DATE + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    opening = time.perf_counter()
    step = "opening"
    times = {"metering": 0.0, "rating": 0.0}
    billing: BillingResult | None = None
    with open_store(kind, root) as conn:
        t0 = time.perf_counter()
        timer = threading.Timer(budget, conn.interrupt)
        timer.start()
        try:
            step = "metering"
            metering = close_metering(conn, catalog, CLOSE_DATE, now=now, run_id="bench")
            times["metering"] = time.perf_counter() - t0
            if kind == "lake":
                step = "rating"
                billing = close_billing(conn, catalog, CLOSE_DATE, now=now)
                times["rating"] = time.perf_counter() - t0 - times["metering"]
        except duckdb.InterruptException:
            times[step] = time.perf_counter() - t0 - sum(times.values())
            return BenchResult(
                events, subscriptions, build_seconds, t0 - opening, *times.values(), 0, 0, interrupted_in=step
            )
        finally:
            timer.cancel()
        check(conn, events, subscriptions, metering, billing)
    if billing is None:
        return BenchResult(
            events,
            subscriptions,
            build_seconds,
            t0 - opening,
            *times.values(),
            0,
            0,
            rating_skipped=RATING_NEEDS_LAKE,
        )
    return BenchResult(
        events, subscriptions, build_seconds, t0 - opening, *times.values(), billing.invoices, billing.lines
    )


def _measure(events: int, subs: int, root: Path, kind: str, budget: float) -> str:
    """One line of the table: the close's figures, or why the native file has none."""
    label = STORAGE_LABELS[kind]
    try:
        r = run(events, subs, root, kind, budget)
    except Exception as exc:  # the native file is a comparison only: say why it has no figure
        if kind == "lake":
            raise
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        return f"{label:<32} {events:>11,} {subs:>8,}  n/a: {type(exc).__name__}: {first}"
    met = r.interrupted_in is None and r.close_seconds < TARGET_SECONDS
    verdict = ""
    if kind == "lake" and (events, subs) == TARGET_SCALE:
        verdict = f"< {TARGET_SECONDS:g} s {'met' if met else 'NOT met'}"
    head = f"{label:<32} {r.events:>11,} {r.subscriptions:>8,} {r.build_seconds:>8.1f} {r.open_seconds:>7.2f}"
    if r.rating_skipped is not None:
        return f"{head} {r.metering_seconds:>8.2f} {'-':>7}  metering only; {r.rating_skipped}"
    if r.interrupted_in is not None:
        return (
            f"{head} {r.metering_seconds:>8.2f} {r.rating_seconds:>7.2f} {'>' + format(budget, 'g'):>8} "
            f"{'-':>11} {'-':>9} {'-':>8}  {verdict} (stopped after {budget:g} s in {r.interrupted_in})"
        )
    return (
        f"{head} {r.metering_seconds:>8.2f} {r.rating_seconds:>7.2f} {r.close_seconds:>8.2f} "
        f"{r.events / r.close_seconds:>11,.0f} {r.invoices:>9,} {r.lines:>8,}  {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", action="append", help="EVENTS:SUBSCRIPTIONS (repeatable); default 10000000:100000"
    )
    parser.add_argument("--workdir", default=str(Path(__file__).parent / "out" / "close_bench"))
    parser.add_argument("--skip-native", action="store_true", help="the lake only")
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds after which a close is interrupted and reported as not met (default 120)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the stores under --workdir")
    args = parser.parse_args(argv)
    scales = args.scale or ["10000000:100000"]
    kinds = ["lake"] if args.skip_native else ["lake", "native"]
    print(
        f"{'storage':<32} {'events':>11} {'subs':>8} {'build s':>8} {'open s':>7} {'meter s':>8} "
        f"{'rate s':>7} {'close s':>8} {'events/s':>11} {'invoices':>9} {'lines':>8}  target",
        flush=True,
    )
    workdir = Path(args.workdir)
    try:
        for scale in scales:
            events, subs = (int(x) for x in scale.split(":"))
            for kind in kinds:
                print(_measure(events, subs, workdir / kind, kind, args.budget), flush=True)
                if not args.keep:
                    shutil.rmtree(workdir / kind, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            if workdir.parent.name == "out" and not any(workdir.parent.iterdir()):
                workdir.parent.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
