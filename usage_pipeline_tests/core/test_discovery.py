"""Sensor discovery: never miss a file version, never request one twice, bounded work per tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from usage_pipeline.core.ingest.discovery import DiscoveryLimits, ListingCursor, batch_files, plan_tick
from usage_pipeline.core.ingest.model import FileVersion

T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


class Bucket:
    """S3 listing semantics: key order, StartAfter, at most `page_size` keys per page, one version per key."""

    def __init__(self, page_size: int = 1000) -> None:
        self.objects: dict[str, FileVersion] = {}
        self.page_size = page_size
        self.pages_listed = 0
        self.fail_on_page: int | None = None

    def put(self, key: str, at: datetime, etag: str | None = None, size: int = 100) -> FileVersion:
        version = FileVersion(key, etag or f"etag-{key}-{at.timestamp()}", size, at)
        self.objects[key] = version
        return version

    def list_page(self, start_after: str | None) -> tuple[list[FileVersion], bool]:
        self.pages_listed += 1
        if self.fail_on_page is not None and self.pages_listed == self.fail_on_page:
            raise ConnectionError("S3 went away mid-listing")
        keys = sorted(k for k in self.objects if start_after is None or k > start_after)
        page = keys[: self.page_size]
        return [self.objects[k] for k in page], len(keys) > len(page)


def tick(bucket: Bucket, cursor: ListingCursor, now: datetime, limits: DiscoveryLimits | None = None):
    plan = plan_tick(bucket.list_page, cursor, limits or DiscoveryLimits(), now)
    requested = [f for batch in plan.batches for f in batch]
    return requested, plan


def drain(
    bucket: Bucket,
    cursor: ListingCursor,
    now: datetime,
    limits: DiscoveryLimits | None = None,
    ticks: int = 50,
):
    requested: list[FileVersion] = []
    for i in range(ticks):
        got, plan = tick(bucket, cursor, now + timedelta(seconds=30 * i), limits)
        requested += got
        cursor = plan.cursor
    return requested, cursor


def test_first_pass_requests_everything_once_and_later_ticks_nothing():
    bucket = Bucket()
    for i in range(5):
        bucket.put(f"incoming/f{i}.csv", T0)
    first, plan = tick(bucket, ListingCursor(), T0 + timedelta(minutes=1))
    assert sorted(f.key for f in first) == [f"incoming/f{i}.csv" for i in range(5)]
    again, _ = drain(bucket, plan.cursor, T0 + timedelta(minutes=2))
    assert again == []


def test_files_uploaded_in_the_same_second_as_the_last_seen_file_are_not_missed():
    bucket = Bucket()
    bucket.put("incoming/a.csv", T0)
    requested, plan = tick(bucket, ListingCursor(), T0)  # pass starts in the very same second
    bucket.put("incoming/b.csv", T0)  # same LastModified second, uploaded after the listing
    later, _ = drain(bucket, plan.cursor, T0 + timedelta(seconds=1))
    keys = [f.key for f in requested + later]
    assert sorted(keys) == ["incoming/a.csv", "incoming/b.csv"]
    assert len(keys) == len(set(keys))


def test_more_than_one_page_of_keys_is_paginated_without_loss():
    bucket = Bucket(page_size=1000)
    for i in range(2500):
        bucket.put(f"incoming/{i:05d}.csv", T0)
    limits = DiscoveryLimits(run_max_files=50, tick_max_runs=100)  # up to 5,000 files per tick
    requested, _ = drain(bucket, ListingCursor(), T0 + timedelta(minutes=1), limits, ticks=3)
    assert len(requested) == 2500
    assert len({f.key for f in requested}) == 2500


def test_a_reuploaded_key_with_new_content_is_a_new_version():
    bucket = Bucket()
    old = bucket.put("incoming/a.csv", T0, etag="v1")
    first, cursor = drain(bucket, ListingCursor(), T0 + timedelta(minutes=1), ticks=3)
    new = bucket.put("incoming/a.csv", T0 + timedelta(minutes=5), etag="v2")
    second, cursor = drain(bucket, cursor, T0 + timedelta(minutes=6), ticks=3)
    assert first == [old]
    assert second == [new]


def test_a_key_reuploaded_long_after_the_watermark_moved_is_still_found():
    bucket = Bucket()
    bucket.put("incoming/a.csv", T0, etag="v1")
    _, cursor = drain(bucket, ListingCursor(), T0 + timedelta(minutes=1), ticks=3)
    _, cursor = drain(bucket, cursor, T0 + timedelta(days=2), ticks=3)  # many passes later
    new = bucket.put("incoming/a.csv", T0 + timedelta(days=3), etag="v2")
    found, _ = drain(bucket, cursor, T0 + timedelta(days=3, minutes=1), ticks=3)
    assert found == [new]


def test_a_tick_that_fails_half_way_loses_nothing():
    bucket = Bucket(page_size=10)
    for i in range(35):
        bucket.put(f"incoming/{i:03d}.csv", T0)
    bucket.fail_on_page = 2
    cursor = ListingCursor()
    with pytest.raises(ConnectionError):
        tick(bucket, cursor, T0 + timedelta(minutes=1))
    # The failed tick returned no cursor: the sensor keeps the old one and simply tries again.
    bucket.fail_on_page = None
    requested, _ = drain(bucket, cursor, T0 + timedelta(minutes=2))
    assert sorted(f.key for f in requested) == sorted(bucket.objects)
    assert len(requested) == 35


def test_a_backlog_drains_over_ticks_within_the_per_tick_bound():
    bucket = Bucket(page_size=100)
    for i in range(3000):
        bucket.put(f"incoming/{i:05d}.csv", T0 - timedelta(seconds=i))
    limits = DiscoveryLimits(run_max_files=50, tick_max_runs=4)  # at most 200 files per tick
    cursor = ListingCursor()
    seen: list[str] = []
    for i in range(40):
        got, plan = tick(bucket, cursor, T0 + timedelta(minutes=i), limits)
        assert len(got) <= 200
        assert all(len(b) <= 50 for b in plan.batches)
        seen += [f.key for f in got]
        cursor = plan.cursor
    assert len(seen) == 3000 and len(set(seen)) == 3000


def test_listing_time_is_bounded_per_tick():
    bucket = Bucket(page_size=10)
    for i in range(100):
        bucket.put(f"incoming/{i:03d}.csv", T0 - timedelta(days=10))
    cursor = ListingCursor(watermark=T0.timestamp())  # nothing is new: every key is old
    clock = iter(range(0, 10_000, 10))  # each clock reading advances 10 "seconds"
    limits = DiscoveryLimits(tick_list_seconds=25)
    plan = plan_tick(bucket.list_page, cursor, limits, T0, clock=lambda: next(clock))
    assert not plan.pass_completed
    assert plan.keys_listed < 100
    assert plan.cursor.pass_after is not None  # the next tick resumes where this one stopped


def test_recent_set_stays_small_after_passes_complete():
    bucket = Bucket()
    for i in range(300):
        bucket.put(f"incoming/{i:03d}.csv", T0)
    _, cursor = drain(bucket, ListingCursor(), T0 + timedelta(hours=1), ticks=2)
    _, cursor = drain(bucket, cursor, T0 + timedelta(hours=3), ticks=2)
    assert cursor.recent == {}  # everything is older than the watermark now
    assert cursor.watermark > T0.timestamp()


def test_batches_respect_file_and_byte_limits_and_arrival_order():
    files = [FileVersion(f"k{i}", "e", 400, T0 + timedelta(seconds=10 - i)) for i in range(10)]
    too_big = FileVersion("huge", "e", 10**12, T0)
    batches = batch_files([*files, too_big], DiscoveryLimits(run_max_files=3, run_max_bytes=1000))
    assert all(len(b) <= 3 for b in batches)
    assert all(sum(f.size for f in b if f is not too_big) <= 1000 for b in batches)
    flat = [f for b in batches for f in b]
    assert sorted(flat, key=lambda f: (f.last_modified, f.key)) == flat
    assert too_big in flat


def test_cursor_round_trips_through_json():
    cursor = ListingCursor(
        watermark=1.5, pass_started=2.5, pass_after="k", recent={"d": 3.0}, passes_completed=4
    )
    assert ListingCursor.from_json(cursor.to_json()) == cursor
    assert ListingCursor.from_json(None) == ListingCursor()
