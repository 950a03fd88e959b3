"""Billing periods: anniversary periods on a subscription's billing-anchor grid, in UTC (SPEC 7)."""

from __future__ import annotations

from calendar import monthrange
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from usage_pipeline.core.catalog.model import Subscription
from usage_pipeline.core.storage.values import to_utc

_DAY = timedelta(days=1)
_FIXED_STEP = {"day": _DAY, "week": timedelta(weeks=1)}


@dataclass(frozen=True, order=True)
class Period:
    """A billing period [start, end), timezone-aware UTC."""

    start: datetime
    end: datetime


# The grid: boundary n is the anchor moved by n * billing_period units (n may be negative). Each boundary
# is computed from the anchor itself, never from the previous boundary, so a clamped day (Jan 31 -> Feb 28)
# does not drift (-> Mar 31, not Mar 28).


def _months_per_step(sub: Subscription) -> int:
    return sub.billing_period * (12 if sub.billing_period_unit == "year" else 1)


def _boundary(sub: Subscription, n: int) -> datetime:
    step = _FIXED_STEP.get(sub.billing_period_unit)
    anchor = sub.billing_anchor
    if step is not None:
        return anchor + n * sub.billing_period * step
    year, month0 = divmod(anchor.year * 12 + anchor.month - 1 + n * _months_per_step(sub), 12)
    day = min(anchor.day, monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def _index(sub: Subscription, ts: datetime) -> int:
    """The n with boundary(n) <= ts < boundary(n + 1), computed arithmetically (no walk from the anchor)."""
    anchor = sub.billing_anchor
    step = _FIXED_STEP.get(sub.billing_period_unit)
    if step is not None:
        return (ts - anchor) // (sub.billing_period * step)
    # Whole months between the two dates is within one step of the answer; clamping only nudges it.
    months = (ts.year - anchor.year) * 12 + ts.month - anchor.month
    n = months // _months_per_step(sub)
    while _boundary(sub, n) > ts:
        n -= 1
    while _boundary(sub, n + 1) <= ts:
        n += 1
    return n


def _is_active(sub: Subscription, ts: datetime) -> bool:
    return sub.started_at <= ts and (sub.cancelled_at is None or ts < sub.cancelled_at)


def _period_at_index(sub: Subscription, n: int) -> Period:
    """Grid period n clipped to the subscription: the first starts at started_at, the last ends at cancel."""
    start = max(_boundary(sub, n), sub.started_at)
    end = _boundary(sub, n + 1)
    if sub.cancelled_at is not None and sub.cancelled_at < end:
        end = sub.cancelled_at
    return Period(start, end)


def period_containing(sub: Subscription, ts: datetime) -> Period | None:
    """The period holding instant `ts` (start inclusive, end exclusive); None when not active at `ts`."""
    ts = to_utc(ts)
    if not _is_active(sub, ts):
        return None
    return _period_at_index(sub, _index(sub, ts))


def periods_ending_on(sub: Subscription, day: date) -> tuple[Period, ...]:
    """Every period whose end falls on UTC day `day`, earliest first.

    At most one grid boundary falls on a day (the smallest unit is a day), but a cancellation on the same
    day as a boundary ends a second, short period: e.g. a daily subscription cancelled at 15:00 has periods
    ending at 00:00 and at 15:00 that day. Both must be closed.
    """
    day_start = datetime.combine(day, time(), tzinfo=UTC)
    day_end = day_start + _DAY
    started, cancelled = sub.started_at, sub.cancelled_at
    if day_end <= started or (cancelled is not None and cancelled < day_start):
        return ()
    periods: list[Period] = []
    # The first grid boundary at or after the day's start.
    n = _index(sub, day_start)
    if _boundary(sub, n) < day_start:
        n += 1
    boundary = _boundary(sub, n)
    if boundary < day_end and started < boundary and (cancelled is None or boundary <= cancelled):
        periods.append(_period_at_index(sub, n - 1))
    if cancelled is not None and day_start <= cancelled < day_end and cancelled != boundary:
        periods.append(_period_at_index(sub, _index(sub, cancelled - timedelta(microseconds=1))))
    return tuple(periods)
