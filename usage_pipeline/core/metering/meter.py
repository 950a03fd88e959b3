"""Metering a close date: which stored events count toward which subscription, meter and period (SPEC 7)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Generic, NamedTuple, TypeVar

import duckdb
import pyarrow as pa

from usage_pipeline.core.catalog.model import Catalog, Meter
from usage_pipeline.core.catalog.periods import periods_ending_on
from usage_pipeline.core.catalog.publish import catalog_relations
from usage_pipeline.core.metering import sql
from usage_pipeline.core.storage.lake import (
    is_retryable,
    lake_snapshot,
    registered,
    transact,
)
from usage_pipeline.core.storage.values import TIMESTAMP_TYPE, naive_utc

T = TypeVar("T")


class ClosingPeriod(NamedTuple):
    """One subscription period being closed; times are naive UTC like the DuckDB columns.

    A NamedTuple: a close builds one per subscription, and a frozen dataclass is several times slower to
    construct.
    """

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


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Building one small acyclic object per subscription triggers collections that each walk the whole
    # (large) catalog; nothing here needs the cycle collector.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def plan_close(catalog: Catalog, close_date: date, now: datetime) -> ClosePlan:
    """Every subscription period whose end falls on `close_date` (UTC); periods ending after `now` are
    not over yet: they are left out and reported, and a later re-close of the date picks them up."""
    with _gc_paused():
        cutoff = naive_utc(now)
        over: list[ClosingPeriod] = []
        waiting: list[ClosingPeriod] = []
        # Periods depend only on the schedule; subscriptions sharing one (imports, calendar-aligned anchors)
        # are computed once.
        memo: dict[tuple[object, ...], list[tuple[datetime, datetime]]] = {}
        for sub in catalog.subscriptions:
            key = (
                sub.billing_period_unit,
                sub.billing_period,
                sub.billing_anchor,
                sub.started_at,
                sub.cancelled_at,
            )
            periods = memo.get(key)
            if periods is None:
                periods = [(naive_utc(p.start), naive_utc(p.end)) for p in periods_ending_on(sub, close_date)]
                memo[key] = periods
            for start, end in periods:
                closing = ClosingPeriod(sub.id, sub.customer_id, start, end)
                (over if end <= cutoff else waiting).append(closing)
        return ClosePlan(close_date, tuple(over), tuple(waiting))


def _json_pointer(key: str) -> str:
    # RFC 6901: a property name is matched literally, whatever characters it holds.
    return "/" + key.replace("~", "~0").replace("/", "~1")


def meter_relations(catalog: Catalog) -> dict[str, pa.Table]:
    """The meters as the relations the matching SQL joins, each meter numbered by its position in the
    catalog (meter_no): mt_cat_meters (one row per meter), mt_cat_match_keys (layout, key_path, value,
    meter_no: a Stripe meter's event_name under key_path '', each value of a filters-only meter's first
    filter under that filter's path) and mt_cat_layout_keys (layout, key_path: the keys an event of the
    layout is looked up by)."""
    filter_type = pa.list_(pa.struct([("path", pa.string()), ("vals", pa.list_(pa.string()))]))

    def residual(meter: Meter) -> list[dict[str, object]] | None:
        # Chargebee meters are joined on their first filter; Stripe meters check all their filters here.
        filters = list(meter.filters.items())
        checked = filters if meter.event_name is not None else filters[1:]
        return [{"path": _json_pointer(k), "vals": list(v)} for k, v in checked] or None

    meters = catalog.meters
    chargebee_keys = [
        ("chargebee", _json_pointer(key), value, number)
        for number, m in enumerate(meters)
        if m.event_name is None and m.filters
        for key, values in list(m.filters.items())[:1]
        for value in values
    ]
    stripe_keys = [("stripe", "", m.event_name, n) for n, m in enumerate(meters) if m.event_name is not None]
    key_rows = stripe_keys + chargebee_keys
    # Every layout has at least one key (Chargebee: NULL when no meter has filters), so that an event
    # matching no meter still gets its row.
    chargebee_paths = sorted({k[1] for k in chargebee_keys}) or [None]
    layout_keys = [("stripe", ""), *(("chargebee", path) for path in chargebee_paths)]
    return {
        "mt_cat_meters": pa.table(
            {
                "meter_no": pa.array(range(len(meters)), type=pa.int32()),
                "meter_id": pa.array([m.id for m in meters], type=pa.string()),
                "aggregation": pa.array([m.aggregation for m in meters], type=pa.string()),
                "value_path": pa.array([_json_pointer(m.value_property) for m in meters], type=pa.string()),
                "residual": pa.array([residual(m) for m in meters], type=filter_type),
            }
        ),
        "mt_cat_match_keys": pa.table(
            {
                "layout": pa.array([r[0] for r in key_rows], type=pa.string()),
                "key_path": pa.array([r[1] for r in key_rows], type=pa.string()),
                "value": pa.array([r[2] for r in key_rows], type=pa.string()),
                "meter_no": pa.array([r[3] for r in key_rows], type=pa.int32()),
            }
        ),
        "mt_cat_layout_keys": pa.table(
            {
                "layout": pa.array([r[0] for r in layout_keys], type=pa.string()),
                "key_path": pa.array([r[1] for r in layout_keys], type=pa.string()),
            }
        ),
    }


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


# Join orders the optimizer must not change (see planned_as_written).
_AS_WRITTEN = ("join_order", "build_side_probe_side")


@contextmanager
def planned_as_written(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Plan the statements of the block with their joins in the order the SQL writes them: the big input
    on the probe (left) side, the small tables it looks things up in on the build (right) side.

    DuckDB 1.5.5 estimates a TEMP table created in the current transaction at 0 rows (its rows are not
    committed yet), so inside a transaction the optimizer sees the 10M-row mt_matches and the 5-row
    mt_meters as equally small and may build its hash table on the 10M rows (seconds, where probing
    takes a fraction). The metering SQL is written in the order to run; this turns off the two
    optimizers that would reorder it (join order, build/probe side). Best entered outside any
    transaction (close_metering does): see _restore_optimizers for a transaction that fails inside.
    """
    (previous,) = conn.execute("SELECT current_setting('disabled_optimizers')").fetchall()[0]
    disabled = [name.strip() for name in str(previous).split(",") if name.strip()]
    missing = [name for name in _AS_WRITTEN if name not in disabled]
    if not missing:
        yield
        return
    conn.execute(f"SET disabled_optimizers = '{','.join(disabled + missing)}'")
    try:
        yield
    finally:
        _restore_optimizers(conn, str(previous))


def _restore_optimizers(conn: duckdb.DuckDBPyConnection, previous: str) -> None:
    restore = f"SET disabled_optimizers = '{previous}'"
    try:
        conn.execute(restore)
    except duckdb.TransactionException:
        # A failed statement aborted the transaction, and DuckDB accepts no SET there: the transaction
        # can only be rolled back, so it is now (its owner's own ROLLBACK then finds none, which
        # lake.transact and lake.scratch allow), and the setting put back.
        conn.execute("ROLLBACK")
        conn.execute(restore)


def compute_metering(
    conn: duckdb.DuckDBPyConnection, catalog: Catalog, periods_relation: str
) -> tuple[datetime, datetime] | None:
    """Meter the periods held by the relation `periods_relation` (subscription_id, customer_id,
    period_start, period_end) into the TEMP tables mt_periods, mt_matches, mt_usage, mt_exceptions (and
    the small mt_meters, mt_subs, mt_sub_meters, mt_routes, mt_files they refer to).

    Returns the event-time window looked at ([earliest start, latest end)), None when no period.
    Writes nothing else: the caller copies the workspace (write_metering) or reads it (late usage).
    """
    lo, hi = conn.execute(sql.WINDOW.format(periods=periods_relation)).fetchall()[0]
    if lo is None:
        # Nothing closes: an empty window still creates the workspace tables for the writers.
        lo = hi = datetime(1970, 1, 1)
    with (
        registered(conn, {**catalog_relations(catalog), **meter_relations(catalog)}),
        planned_as_written(conn),
    ):
        conn.execute(sql.CREATE_METERS)
        conn.execute(sql.CREATE_SUBSCRIPTION_METERS)
        conn.execute(sql.CREATE_SUBSCRIPTIONS)
        conn.execute(sql.CREATE_PERIODS.format(periods=periods_relation))
        conn.execute(sql.CREATE_ROUTES)
        conn.execute(sql.CREATE_FILES, {"window_start": lo, "window_end": hi})
        conn.execute(sql.CREATE_MATCHES, {"window_start": lo, "window_end": hi})
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


class Ahead(NamedTuple, Generic[T]):
    """A workspace computed before the write transaction, from the lake snapshot `snapshot`."""

    snapshot: int
    value: T


def compute_ahead(
    conn: duckdb.DuckDBPyConnection, compute: Callable[[], T], cleanup: Callable[[], None]
) -> Ahead[T] | None:
    """Run `compute` (which only reads the lake and creates TEMP tables) before the write transaction,
    each statement committing on its own, and say which lake snapshot it read.

    Why: DuckDB 1.5.5 scans a TEMP table created in the current transaction with a single thread, and
    estimates it at 0 rows (its rows are not committed), so a workspace built inside the write
    transaction is read by every later statement on one core, with blind join orders. Built here, each
    table is committed before the next statement reads it: parallel scans, true row counts.

    The snapshot is read before and after; snapshot ids only grow, so equal ids mean no commit came in
    between and every statement read that snapshot. The write transaction uses the workspace only if it
    reads the same snapshot (`is_current`), and otherwise computes it again itself: what is written
    always comes from what the write transaction reads. None (compute in the write transaction) when
    the connection has no lake, a commit came in between, or the catalog was busy.
    """
    before = lake_snapshot(conn)
    if before is None:
        return None
    try:
        value = compute()
        after = lake_snapshot(conn)
    except duckdb.Error as exc:
        with contextlib.suppress(duckdb.Error):
            cleanup()
        if is_retryable(exc):
            return None
        raise
    return Ahead(before, value) if after == before else None


def is_current(conn: duckdb.DuckDBPyConnection, ahead: Ahead[object] | None) -> bool:
    """True when the connection's transaction reads the snapshot `ahead` was computed from."""
    return ahead is not None and lake_snapshot(conn) == ahead.snapshot


def close_metering(
    conn: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    close_date: date,
    now: datetime | None = None,
    run_id: str | None = None,
) -> MeteringResult:
    """Meter every period ending on `close_date` that is over by `now` and store the result, replacing
    the date's previous rows in one transaction (re-running is safe).

    The workspace is computed ahead of the write transaction (compute_ahead); the write transaction
    copies it when it reads the same lake snapshot, and otherwise meters again from what it reads."""
    now = now or datetime.now(UTC)
    plan = plan_close(catalog, close_date, now)

    def compute() -> tuple[datetime, datetime] | None:
        with registered(conn, {"mt_plan": periods_table(plan.periods)}):
            return compute_metering(conn, catalog, "mt_plan")

    def meter() -> tuple[object, dict[str, int], int, int]:
        window = ahead.value if ahead is not None and is_current(conn, ahead) else compute()
        write_metering(conn, close_date, now, run_id)
        exceptions = dict(conn.execute(sql.EXCEPTION_COUNTS).fetchall())
        usage_rows, events = conn.execute(sql.USAGE_TOTALS).fetchall()[0]
        drop_workspace(conn)
        return window, exceptions, usage_rows, events

    with planned_as_written(conn):
        ahead = compute_ahead(conn, compute, lambda: drop_workspace(conn))
        try:
            window, exceptions, usage_rows, events = transact(conn, meter, what=f"metering {close_date}")
        except BaseException:
            # A workspace computed ahead was committed: it would outlive a failed close.
            with contextlib.suppress(duckdb.Error):
                drop_workspace(conn)
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
