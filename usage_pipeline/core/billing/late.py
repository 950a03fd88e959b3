"""Late usage: events ingested after their period was closed, and the money they would add on re-close."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import duckdb

from usage_pipeline.core.billing import sql
from usage_pipeline.core.billing.close import rate_periods
from usage_pipeline.core.billing.money import round_money
from usage_pipeline.core.catalog.model import Catalog
from usage_pipeline.core.metering.meter import compute_metering
from usage_pipeline.core.storage.lake import scratch


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
    for (close_date,) in conn.execute(sql.LATE_CANDIDATE_DATES).fetchall():
        # The workspace is throw-away: rolling back drops every TEMP table made here.
        with scratch(conn):
            conn.execute(sql.LATE_STORED_PERIODS, {"close_date": close_date})
            compute_metering(conn, catalog, "late_periods")
            rate_periods(conn, catalog, "mt_periods", "mt_usage")
            rows = conn.execute(sql.LATE_PERIODS, {"close_date": close_date}).fetchall()
        found.extend(
            LatePeriod(close_date, sub, customer, start, end, int(n), currency, invoiced, rerated)
            for sub, customer, start, end, n, currency, invoiced, rerated in rows
        )
    return LateUsageReport(tuple(found))
