"""Billing periods: anniversary grids, month-end clamping, short first/last periods (SPEC 7)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from usage_pipeline.core.catalog.model import Subscription
from usage_pipeline.core.catalog.periods import Period, period_containing, periods_ending_on


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def sub(unit: str, started: datetime, every: int = 1, **extra: object) -> Subscription:
    return Subscription(
        id="sub",
        customer_id="cus",
        currency="USD",
        price_ids=("p",),
        started_at=started,
        billing_period_unit=unit,
        billing_period=every,
        **extra,
    )


def ends(periods: list[Period]) -> list[datetime]:
    return [p.end for p in periods]


def periods_between(s: Subscription, start: datetime, end: datetime) -> list[Period]:
    """The periods overlapping [start, end), in order, found as the close finds them: day by day, the
    periods ending that day. The longest period tested is a year, so none ends later than 400 days on."""
    days = (end.date() - start.date()).days + 400
    return [
        period
        for day in (start.date() + timedelta(days=n) for n in range(days))
        for period in periods_ending_on(s, day)
        if period.start < end and period.end > start
    ]


def test_month_end_anchor_clamps_and_returns_to_the_31st_through_a_leap_february() -> None:
    s = sub("month", utc(2028, 1, 31))
    periods = periods_between(s, utc(2028, 1, 31), utc(2028, 5, 1))
    assert ends(periods) == [utc(2028, 2, 29), utc(2028, 3, 31), utc(2028, 4, 30), utc(2028, 5, 31)]
    # Periods tile time: each starts where the previous ended.
    assert all(a.end == b.start for a, b in pairwise(periods))
    # Non-leap year: Feb 28, and still back to Mar 31 (boundaries come from the anchor, not chained).
    assert ends(periods_between(sub("month", utc(2027, 1, 31)), utc(2027, 2, 1), utc(2027, 3, 1))) == [
        utc(2027, 2, 28),
        utc(2027, 3, 31),
    ]


def test_anchor_on_the_30th_in_february_and_march() -> None:
    s = sub("month", utc(2026, 1, 30))
    assert ends(periods_between(s, utc(2026, 2, 1), utc(2026, 4, 1))) == [
        utc(2026, 2, 28),
        utc(2026, 3, 30),
        utc(2026, 4, 30),
    ]


def test_yearly_feb_29_anchor_gives_feb_28_in_other_years() -> None:
    s = sub("year", utc(2024, 2, 29))
    assert ends(periods_between(s, utc(2024, 3, 1), utc(2028, 3, 1))) == [
        utc(2025, 2, 28),
        utc(2026, 2, 28),
        utc(2027, 2, 28),
        utc(2028, 2, 29),
        utc(2029, 2, 28),
    ]


def test_quarterly_periods() -> None:
    s = sub("month", utc(2026, 1, 15), every=3)
    assert period_containing(s, utc(2026, 5, 1)) == Period(utc(2026, 4, 15), utc(2026, 7, 15))


def test_weekly_and_every_two_weeks() -> None:
    monday = utc(2026, 3, 2)
    assert period_containing(sub("week", monday), utc(2026, 3, 12)) == Period(
        utc(2026, 3, 9), utc(2026, 3, 16)
    )
    biweekly = sub("week", monday, every=2)
    assert period_containing(biweekly, utc(2026, 3, 12)) == Period(utc(2026, 3, 2), utc(2026, 3, 16))
    assert periods_ending_on(biweekly, date(2026, 3, 16)) == (Period(utc(2026, 3, 2), utc(2026, 3, 16)),)
    assert periods_ending_on(biweekly, date(2026, 3, 9)) == ()


def test_daily_periods_end_at_midnight() -> None:
    s = sub("day", utc(2026, 1, 1))
    assert periods_ending_on(s, date(2026, 6, 10)) == (Period(utc(2026, 6, 9), utc(2026, 6, 10)),)
    assert periods_ending_on(s, date(2026, 1, 1)) == ()  # the subscription starts that day
    assert periods_ending_on(s, date(2026, 1, 2)) == (Period(utc(2026, 1, 1), utc(2026, 1, 2)),)


def test_anchor_with_a_time_of_day() -> None:
    s = sub("day", utc(2026, 1, 1, 13, 45))
    assert period_containing(s, utc(2026, 1, 5, 9)) == Period(
        utc(2026, 1, 4, 13, 45), utc(2026, 1, 5, 13, 45)
    )
    assert periods_ending_on(s, date(2026, 1, 5)) == (
        Period(utc(2026, 1, 4, 13, 45), utc(2026, 1, 5, 13, 45)),
    )
    monthly = sub("month", utc(2026, 1, 31, 13, 45))
    assert periods_ending_on(monthly, date(2026, 2, 28)) == (
        Period(utc(2026, 1, 31, 13, 45), utc(2026, 2, 28, 13, 45)),
    )


def test_anchor_later_than_start_gives_a_short_first_period() -> None:
    s = sub("month", utc(2026, 1, 10), billing_anchor=utc(2026, 2, 1))
    periods = periods_between(s, utc(2026, 1, 1), utc(2026, 3, 15))
    assert periods == [
        Period(utc(2026, 1, 10), utc(2026, 2, 1)),
        Period(utc(2026, 2, 1), utc(2026, 3, 1)),
        Period(utc(2026, 3, 1), utc(2026, 4, 1)),
    ]
    assert periods_ending_on(s, date(2026, 2, 1)) == (periods[0],)


def test_anchor_earlier_than_start_starts_the_first_period_at_start() -> None:
    s = sub("month", utc(2026, 3, 20), billing_anchor=utc(2025, 1, 5))
    assert period_containing(s, utc(2026, 3, 20)) == Period(utc(2026, 3, 20), utc(2026, 4, 5))
    assert period_containing(s, utc(2026, 3, 19)) is None


def test_cancellation_ends_the_last_period() -> None:
    s = sub("month", utc(2026, 1, 15), cancelled_at=utc(2026, 3, 20, 12))
    assert periods_between(s, utc(2026, 1, 1), utc(2027, 1, 1)) == [
        Period(utc(2026, 1, 15), utc(2026, 2, 15)),
        Period(utc(2026, 2, 15), utc(2026, 3, 15)),
        Period(utc(2026, 3, 15), utc(2026, 3, 20, 12)),
    ]
    assert periods_ending_on(s, date(2026, 3, 20)) == (Period(utc(2026, 3, 15), utc(2026, 3, 20, 12)),)
    assert periods_ending_on(s, date(2026, 4, 15)) == ()  # cancelled before that boundary
    assert period_containing(s, utc(2026, 3, 20, 12)) is None  # inactive from cancelled_at on


def test_cancellation_on_a_boundary_day_ends_two_periods_that_day() -> None:
    s = sub("day", utc(2026, 1, 1), cancelled_at=utc(2026, 1, 10, 15))
    assert periods_ending_on(s, date(2026, 1, 10)) == (
        Period(utc(2026, 1, 9), utc(2026, 1, 10)),
        Period(utc(2026, 1, 10), utc(2026, 1, 10, 15)),
    )
    assert periods_ending_on(s, date(2026, 1, 11)) == ()
    # Cancelled exactly on a boundary: one period, no empty stub.
    exact = sub("day", utc(2026, 1, 1), cancelled_at=utc(2026, 1, 10))
    assert periods_ending_on(exact, date(2026, 1, 10)) == (Period(utc(2026, 1, 9), utc(2026, 1, 10)),)


def test_period_containing_at_exact_boundaries() -> None:
    s = sub("month", utc(2026, 1, 15))
    assert period_containing(s, utc(2026, 2, 15)) == Period(
        utc(2026, 2, 15), utc(2026, 3, 15)
    )  # start inclusive
    assert period_containing(s, utc(2026, 2, 15) - timedelta(microseconds=1)) == Period(
        utc(2026, 1, 15), utc(2026, 2, 15)
    )  # end exclusive
    assert period_containing(s, utc(2026, 1, 15)) == Period(utc(2026, 1, 15), utc(2026, 2, 15))
    assert period_containing(s, utc(2026, 1, 14, 23, 59)) is None  # before started_at


def test_naive_and_offset_timestamps_are_read_as_utc() -> None:
    s = sub("day", utc(2026, 1, 1))
    assert period_containing(s, datetime(2026, 1, 5, 23, 30)) == Period(utc(2026, 1, 5), utc(2026, 1, 6))
    # 00:30 in Paris on Jan 6 is 23:30 UTC on Jan 5.
    paris = datetime(2026, 1, 6, 0, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert period_containing(s, paris) == Period(utc(2026, 1, 5), utc(2026, 1, 6))


units = st.sampled_from(["day", "week", "month", "year"])
instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@given(
    unit=units,
    every=st.integers(1, 4),
    anchor=instants,
    start=instants,
    ts=instants,
    life=st.none() | st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=3000)),
)
def test_every_active_instant_is_in_exactly_one_period_that_ends_on_its_day(
    unit: str, every: int, anchor: datetime, start: datetime, ts: datetime, life: timedelta | None
) -> None:
    cancelled = None if life is None else start + life
    s = sub(unit, start, every=every, billing_anchor=anchor, cancelled_at=cancelled)
    # Whatever ends on ts's day is a real period of the subscription, ending that day.
    for ending in periods_ending_on(s, ts.date()):
        assert ending.end.date() == ts.date()
        assert period_containing(s, ending.start) == ending
    period = period_containing(s, ts)
    if ts < start or (cancelled is not None and ts >= cancelled):
        assert period is None
        return
    assert period is not None
    assert start <= period.start <= ts < period.end
    assert cancelled is None or period.end <= cancelled
    # The period is found again from its end day, and its neighbours tile time without gaps.
    assert period in periods_ending_on(s, period.end.date())
    following = period_containing(s, period.end)
    assert following is None if period.end == cancelled else following.start == period.end
    if period.start > start:
        previous = period_containing(s, period.start - timedelta(microseconds=1))
        assert previous is not None and previous.end == period.start
