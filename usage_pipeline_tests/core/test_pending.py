"""Pending versions: requested until the ledger has them, never given up, with backoff between retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from usage_pipeline.core.ingest.discovery import ListingCursor, version_digest
from usage_pipeline.core.ingest.ledger import AttemptRecord
from usage_pipeline.core.ingest.model import FileVersion
from usage_pipeline.core.ingest.pending import (
    PendingVersion,
    add_pending,
    backoff,
    drop_done,
    pending_versions,
    select_due,
    store_pending,
)

T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
BASE, CAP = timedelta(seconds=30), timedelta(hours=1)


def version(name: str, at: datetime = T0) -> FileVersion:
    return FileVersion(f"incoming/{name}.csv", f"etag-{name}", 100, at)


def due(pending, now, *, in_flight=frozenset(), ledger_read=True, attempts=None):
    return [
        p.file.key
        for p in select_due(
            pending,
            now=now,
            in_flight=set(in_flight),
            ledger_read=ledger_read,
            attempts=attempts or {},
            base=BASE,
            cap=CAP,
        )
    ]


def requested(pending, name: str, at: datetime, run_key: str = "files:x:1") -> None:
    p = pending[version_digest(version(name))]
    p.requested_at, p.run_key, p.requests = at.timestamp(), run_key, p.requests + 1


def test_backoff_retries_at_once_then_doubles_up_to_the_cap_and_never_stops():
    waits = [backoff(n, BASE, CAP) for n in range(1, 12)]
    assert waits[:5] == [timedelta(0), BASE, 2 * BASE, 4 * BASE, 8 * BASE]
    assert waits[-1] == CAP and all(w <= CAP for w in waits)
    assert backoff(10_000, BASE, CAP) == CAP  # attempt ten thousand is still scheduled


def test_new_versions_are_due_at_once_in_arrival_order():
    pending: dict[str, PendingVersion] = {}
    add_pending(pending, [version("b", T0 + timedelta(seconds=5)), version("a", T0 + timedelta(seconds=9))])
    assert due(pending, T0) == ["incoming/b.csv", "incoming/a.csv"]


def test_a_version_with_a_run_in_flight_is_not_requested_again():
    pending: dict[str, PendingVersion] = {}
    add_pending(pending, [version("a")])
    requested(pending, "a", T0, "files:a:1")
    assert due(pending, T0 + timedelta(hours=5), in_flight={"files:a:1"}) == []
    assert due(pending, T0 + timedelta(hours=5)) == ["incoming/a.csv"]  # the run ended: ledger decides


def test_retries_wait_for_a_ledger_read_but_new_versions_do_not():
    pending: dict[str, PendingVersion] = {}
    add_pending(pending, [version("old"), version("new")])
    requested(pending, "old", T0)
    assert due(pending, T0 + timedelta(minutes=1), ledger_read=False) == ["incoming/new.csv"]


def test_retries_back_off_by_the_attempts_the_runs_recorded():
    pending: dict[str, PendingVersion] = {}
    add_pending(pending, [version("a")])
    requested(pending, "a", T0)
    record = AttemptRecord(3, T0.replace(tzinfo=None), "run-3", "S3: SlowDown")
    attempts = {("incoming/a.csv", "etag-a"): record}
    # after three attempts the wait is 2 x base (60 s) from the last attempt
    assert due(pending, T0 + timedelta(seconds=59), attempts=attempts) == []
    assert due(pending, T0 + timedelta(seconds=60), attempts=attempts) == ["incoming/a.csv"]


def test_only_the_ledger_removes_a_version_and_the_cursor_round_trips_it():
    pending: dict[str, PendingVersion] = {}
    add_pending(pending, [version("a"), version("b")])
    requested(pending, "a", T0)
    cursor = ListingCursor()
    store_pending(cursor, pending)
    back = pending_versions(ListingCursor.from_json(cursor.to_json()))
    assert back == pending
    assert drop_done(back, {("incoming/a.csv", "etag-a")}) == 1
    assert [p.file.key for p in back.values()] == ["incoming/b.csv"]
    assert add_pending(back, [version("b")]) == 0  # already pending: not added twice
