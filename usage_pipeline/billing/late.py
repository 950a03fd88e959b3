"""Late usage: events ingested after their period was closed, and the money they would add on re-close."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import duckdb

from usage_pipeline.billing.close import rate_periods
from usage_pipeline.billing.money import round_money
from usage_pipeline.catalog.model import Catalog
from usage_pipeline.metering.meter import compute_metering
from usage_pipeline.metering.sql import COUNTED

# Close dates that may hold late events: some event in the date's window was ingested after the close.
_CANDIDATE_DATES = """
    WITH closes AS (
        SELECT close_date, min(period_start) AS lo, max(period_end) AS hi, min(closed_at) AS closed_at
        FROM closed_periods GROUP BY close_date)
    SELECT DISTINCT c.close_date
    FROM closes AS c
    JOIN usage_events AS e ON e.ts >= c.lo AND e.ts < c.hi AND e.ingested_at > c.closed_at
    ORDER BY c.close_date
"""

# The date's closed periods that a late event can land in: a late Chargebee event names its subscription, a
# late Stripe event can route to any subscription of its customer. Only these are re-metered and re-rated
# (routing still sees the whole catalog), so a late file costs the check its customers, not the whole date.
_STORED_PERIODS = """
    CREATE OR REPLACE TEMP TABLE late_periods AS
    WITH closed AS (
        SELECT * FROM closed_periods WHERE close_date = $close_date),
    bounds AS (
        SELECT min(period_start) AS lo, max(period_end) AS hi, min(closed_at) AS closed_at FROM closed),
    late_owners AS (
        SELECT DISTINCT e.layout,
               CASE e.layout WHEN 'stripe' THEN e.customer_id ELSE e.subscription_id END AS owner
        FROM usage_events AS e, bounds AS w
        WHERE e.ts >= w.lo AND e.ts < w.hi AND e.ingested_at > w.closed_at)
    SELECT p.subscription_id, p.customer_id, p.period_start, p.period_end, p.closed_at
    FROM closed AS p
    WHERE p.customer_id IN (SELECT owner FROM late_owners WHERE layout = 'stripe')
       OR p.subscription_id IN (SELECT owner FROM late_owners WHERE layout = 'chargebee')
"""

# Per closed period: the counted events ingested after the period was closed, and the invoice total
# re-rated with them next to the stored one (0 when the close produced no invoice).
_LATE_PERIODS = f"""
    WITH late AS (
        SELECT p.subscription_id, p.period_end, count(DISTINCT m.erow) AS late_events
        FROM (SELECT erow, period_no, ingested_at FROM mt_matches WHERE {COUNTED}) AS m
        JOIN mt_periods AS mp ON mp.period_no = m.period_no
        JOIN late_periods AS p ON p.subscription_id = mp.subscription_id AND p.period_end = mp.period_end
        WHERE m.ingested_at > p.closed_at
        GROUP BY ALL)
    SELECT p.subscription_id, p.customer_id, p.period_start, p.period_end, l.late_events,
           coalesce(r.currency, i.currency) AS currency,
           coalesce(i.total, 0) AS invoiced_total, coalesce(r.total, 0) AS rerated_total
    FROM late AS l
    JOIN late_periods AS p ON p.subscription_id = l.subscription_id AND p.period_end = l.period_end
    LEFT JOIN rt_invoices AS r ON r.subscription_id = l.subscription_id AND r.period_end = l.period_end
    LEFT JOIN pending_invoices AS i
      ON i.close_date = $close_date AND i.subscription_id = l.subscription_id AND i.period_end = l.period_end
    ORDER BY p.subscription_id, p.period_end
"""


@dataclass(frozen=True)
class LatePeriod:
    close_date: date
    subscription_id: str
    customer_id: str
    period_start: datetime
    period_end: datetime
    late_events: int
    currency: str | None
    invoiced_total: Decimal
    rerated_total: Decimal

    @property
    def at_stake(self) -> Decimal:
        """What re-closing the period would add to (or take off) its invoice, in the currency's minor unit
        (both totals are sums of rounded lines, so this is exact)."""
        difference = self.rerated_total - self.invoiced_total
        return round_money(difference, self.currency) if self.currency else difference


@dataclass(frozen=True)
class LateUsageReport:
    periods: tuple[LatePeriod, ...]

    @property
    def late_events(self) -> int:
        return sum(p.late_events for p in self.periods)

    @property
    def at_stake_by_currency(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for p in self.periods:
            key = p.currency or "?"
            totals[key] = totals.get(key, Decimal(0)) + p.at_stake
        return totals

    @property
    def close_dates(self) -> tuple[date, ...]:
        return tuple(sorted({p.close_date for p in self.periods}))


def find_late_usage(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> LateUsageReport:
    """Late events of every closed date, with the money at stake: the date's stored periods are
    re-metered and re-rated in TEMP tables (nothing stored changes) and compared with the invoices."""
    found: list[LatePeriod] = []
    for (close_date,) in conn.execute(_CANDIDATE_DATES).fetchall():
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute(_STORED_PERIODS, {"close_date": close_date})
            compute_metering(conn, catalog, "late_periods")
            rate_periods(conn, catalog, "mt_periods", "mt_usage")
            rows = conn.execute(_LATE_PERIODS, {"close_date": close_date}).fetchall()
        finally:
            # The workspace is throw-away: rolling back drops every TEMP table made above.
            conn.execute("ROLLBACK")
        found.extend(
            LatePeriod(close_date, sub, customer, start, end, int(n), currency, invoiced, rerated)
            for sub, customer, start, end, n, currency, invoiced, rerated in rows
        )
    return LateUsageReport(tuple(found))
