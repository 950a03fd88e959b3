"""Metering a close date: which stored events count toward which subscription, meter and period (SPEC 7)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import duckdb
import pyarrow as pa

from usage_pipeline.billing.periods import periods_ending_on
from usage_pipeline.catalog.model import Catalog, Meter
from usage_pipeline.catalog.publish import TIMESTAMP_TYPE, naive_utc, registered
from usage_pipeline.metering import sql


@dataclass(frozen=True)
class ClosingPeriod:
    """One subscription period being closed; times are naive UTC like the DuckDB columns."""

    subscription_id: str
    customer_id: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class ClosePlan:
    """The periods that end on `close_date`: those over by `now` are metered, the others wait."""

    close_date: date
    periods: tuple[ClosingPeriod, ...]
    not_over: tuple[ClosingPeriod, ...] = ()


@dataclass(frozen=True)
class MeteringResult:
    close_date: date
    periods_closed: int
    not_over: tuple[ClosingPeriod, ...]
    usage_rows: int
    events_metered: int
    exceptions: dict[str, int] = field(default_factory=dict)
    window: tuple[datetime, datetime] | None = None


def plan_close(catalog: Catalog, close_date: date, now: datetime) -> ClosePlan:
    """Every subscription period whose end falls on `close_date` (UTC); periods ending after `now` are
    not over yet: they are left out and reported, and a later re-close of the date picks them up."""
    cutoff = naive_utc(now)
    over: list[ClosingPeriod] = []
    waiting: list[ClosingPeriod] = []
    for sub in catalog.subscriptions:
        for period in periods_ending_on(sub, close_date):
            closing = ClosingPeriod(sub.id, sub.customer_id, naive_utc(period.start), naive_utc(period.end))
            (over if closing.end <= cutoff else waiting).append(closing)
    return ClosePlan(close_date, tuple(over), tuple(waiting))


def _json_pointer(key: str) -> str:
    # RFC 6901: a property name is matched literally, whatever characters it holds.
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _property_paths(meters: Iterable[Meter]) -> list[str]:
    keys: dict[str, None] = {}
    for meter in meters:
        keys[meter.value_property] = None
        for key in meter.filters:
            keys[key] = None
    return list(keys)


def catalog_relations(catalog: Catalog) -> tuple[list[str], dict[str, pa.Table]]:
    """The JSON pointers to parse from each event and the catalog relations the metering SQL joins."""
    keys = _property_paths(catalog.meters) or ["value"]
    index = {key: i + 1 for i, key in enumerate(keys)}  # DuckDB lists are 1-based
    residual_type = pa.list_(pa.struct([("idx", pa.int32()), ("vals", pa.list_(pa.string()))]))

    def residual(meter: Meter) -> list[dict[str, object]] | None:
        # Chargebee meters are joined on their first filter; Stripe meters check all their filters here.
        filters = list(meter.filters.items())
        checked = filters if meter.event_name is not None else filters[1:]
        return [{"idx": index[k], "vals": list(v)} for k, v in checked] or None

    meters = catalog.meters
    key_rows = [
        (m.id, index[key], value)
        for m in meters
        if m.event_name is None and m.filters
        for key, values in list(m.filters.items())[:1]
        for value in values
    ]
    sub_meters: dict[tuple[str, str], object] = {}
    for sub in catalog.subscriptions:
        for price in catalog.prices_of(sub):
            if price.meter is not None:
                sub_meters[(sub.id, price.meter)] = sub
    subs = catalog.subscriptions
    relations = {
        "mt_cat_meters": pa.table(
            {
                "meter_id": [m.id for m in meters],
                "event_name": pa.array([m.event_name for m in meters], type=pa.string()),
                "aggregation": [m.aggregation for m in meters],
                "value_idx": pa.array([index[m.value_property] for m in meters], type=pa.int32()),
                "residual": pa.array([residual(m) for m in meters], type=residual_type),
            }
        ),
        "mt_cat_meter_keys": pa.table(
            {
                "meter_id": pa.array([r[0] for r in key_rows], type=pa.string()),
                "key_idx": pa.array([r[1] for r in key_rows], type=pa.int32()),
                "value": pa.array([r[2] for r in key_rows], type=pa.string()),
            }
        ),
        "mt_cat_sub_meters": pa.table(
            {
                "subscription_id": pa.array([s for s, _ in sub_meters], type=pa.string()),
                "customer_id": pa.array([s.customer_id for s in sub_meters.values()], type=pa.string()),
                "meter_id": pa.array([m for _, m in sub_meters], type=pa.string()),
                "started_at": pa.array(
                    [naive_utc(s.started_at) for s in sub_meters.values()], type=TIMESTAMP_TYPE
                ),
                "cancelled_at": pa.array(
                    [naive_utc(s.cancelled_at) for s in sub_meters.values()], type=TIMESTAMP_TYPE
                ),
            }
        ),
        "mt_cat_subs": pa.table(
            {
                "subscription_id": pa.array([s.id for s in subs], type=pa.string()),
                "customer_id": pa.array([s.customer_id for s in subs], type=pa.string()),
            }
        ),
    }
    return [_json_pointer(k) for k in keys], relations


def periods_table(periods: Iterable[ClosingPeriod]) -> pa.Table:
    rows = list(periods)
    return pa.table(
        {
            "subscription_id": pa.array([p.subscription_id for p in rows], type=pa.string()),
            "customer_id": pa.array([p.customer_id for p in rows], type=pa.string()),
            "period_start": pa.array([p.start for p in rows], type=TIMESTAMP_TYPE),
            "period_end": pa.array([p.end for p in rows], type=TIMESTAMP_TYPE),
        }
    )


def compute_metering(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, periods_relation: str
) -> tuple[datetime, datetime] | None:
    """Meter the periods held by the relation `periods_relation` (subscription_id, customer_id,
    period_start, period_end) into the TEMP tables mt_periods, mt_matches, mt_usage, mt_exceptions.

    Returns the event-time window looked at ([earliest start, latest end)), None when no period.
    Writes nothing else: the caller copies the workspace (write_metering) or reads it (late usage).
    """
    conn.execute(f"CREATE OR REPLACE TEMP TABLE mt_periods AS SELECT * FROM {periods_relation}")
    lo, hi = conn.execute("SELECT min(period_start), max(period_end) FROM mt_periods").fetchall()[0]
    if lo is None:
        # Nothing closes: an empty window still creates the workspace tables for the writers.
        lo = hi = datetime(1970, 1, 1)
    paths, relations = catalog_relations(catalog)
    with registered(conn, relations):
        conn.execute(sql.CREATE_ROUTES)
        conn.execute(sql.CREATE_WINDOW_EVENTS, {"paths": paths, "window_start": lo, "window_end": hi})
        conn.execute(sql.CREATE_MATCHES)
        conn.execute(sql.CREATE_USAGE)
        conn.execute(sql.CREATE_EXCEPTIONS)
    return None if lo == hi else (lo, hi)


def drop_workspace(conn: duckdb.DuckDBPyConnection) -> None:
    for statement in sql.DROP_WORKSPACE:
        conn.execute(statement)


def write_metering(
    conn: duckdb.DuckDBPyConnection, close_date: date, closed_at: datetime, run_id: str | None
) -> None:
    """Replace the close date's rows of closed_periods, meter_usage, metered_events, usage_exceptions
    with the workspace (inside the caller's transaction)."""
    params = {"close_date": close_date, "closed_at": naive_utc(closed_at), "run_id": run_id}
    for statement in sql.DELETE_CLOSE_DATE.values():
        conn.execute(statement, {"close_date": close_date})
    conn.execute(sql.INSERT_CLOSED_PERIODS, params)
    conn.execute(sql.INSERT_METER_USAGE, {k: params[k] for k in ("close_date", "closed_at")})
    conn.execute(sql.INSERT_METERED_EVENTS, {"close_date": close_date})
    conn.execute(sql.INSERT_USAGE_EXCEPTIONS, {"close_date": close_date})


def close_metering(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    close_date: date,
    now: datetime | None = None,
    run_id: str | None = None,
) -> MeteringResult:
    """Meter every period ending on `close_date` that is over by `now` and store the result, replacing
    the date's previous rows in one transaction (re-running is safe)."""
    now = now or datetime.now(UTC)
    plan = plan_close(catalog, close_date, now)
    conn.execute("BEGIN TRANSACTION")
    try:
        with registered(conn, {"mt_plan": periods_table(plan.periods)}):
            window = compute_metering(conn, catalog, "mt_plan")
        write_metering(conn, close_date, now, run_id)
        exceptions = dict(conn.execute(sql.EXCEPTION_COUNTS).fetchall())
        usage_rows, events = conn.execute(sql.USAGE_TOTALS).fetchall()[0]
        drop_workspace(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return MeteringResult(
        close_date=close_date,
        periods_closed=len(plan.periods),
        not_over=plan.not_over,
        usage_rows=int(usage_rows),
        events_metered=int(events),
        exceptions=exceptions,
        window=window,
    )
