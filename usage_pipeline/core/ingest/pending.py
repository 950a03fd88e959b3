"""Pending file versions: proposed by discovery, requested until the ledger has them, with backoff.

The ledger is the truth. A version leaves the pending set only when the ledger holds it; runs that never
started, were killed, failed, were cancelled or ran out of anything else do not matter: the version is
requested again, for as long as it takes. Retries back off (base, then doubling, capped) so a store or
an S3 endpoint that is down is not hammered. Nothing here counts attempts towards giving up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from usage_pipeline.core.ingest.discovery import ListingCursor, version_digest
from usage_pipeline.core.ingest.ledger import AttemptRecord, Version
from usage_pipeline.core.ingest.model import FileVersion


@dataclass
class PendingVersion:
    file: FileVersion
    requested_at: float | None = None  # epoch seconds of the last request; None = never requested
    run_key: str | None = None  # the run key of the last request
    requests: int = 0  # requests made by this cursor's owner

    def to_json(self) -> list:
        f = self.file
        return [
            f.key,
            f.etag,
            f.size,
            f.last_modified.timestamp(),
            self.requested_at,
            self.run_key,
            self.requests,
        ]

    @classmethod
    def from_json(cls, item: list) -> PendingVersion:
        key, etag, size, modified, requested_at, run_key, requests = item
        return cls(
            FileVersion(key, etag, size, datetime.fromtimestamp(modified, UTC)),
            requested_at,
            run_key,
            requests,
        )


def pending_versions(cursor: ListingCursor) -> dict[str, PendingVersion]:
    return {digest: PendingVersion.from_json(item) for digest, item in cursor.pending.items()}


def store_pending(cursor: ListingCursor, pending: Mapping[str, PendingVersion]) -> None:
    cursor.pending = {digest: p.to_json() for digest, p in pending.items()}


def add_pending(pending: dict[str, PendingVersion], files: Iterable[FileVersion]) -> int:
    """Add versions not pending yet; returns how many were added."""
    added = 0
    for file in files:
        digest = version_digest(file)
        if digest not in pending:
            pending[digest] = PendingVersion(file)
            added += 1
    return added


def drop_done(pending: dict[str, PendingVersion], done: set[Version]) -> int:
    """Remove the versions the ledger holds; returns how many."""
    gone = [d for d, p in pending.items() if (p.file.key, p.file.etag) in done]
    for digest in gone:
        del pending[digest]
    return len(gone)


def backoff(attempts: int, base: timedelta, cap: timedelta) -> timedelta:
    """How long after attempt `attempts` ended the next may start: the first retry at once (a killed
    process is no reason to wait), then base, 2 x base, 4 x base … up to cap."""
    if attempts <= 1:
        return timedelta(0)
    return min(base * 2 ** min(attempts - 2, 32), cap)


def attempts_so_far(p: PendingVersion, record: AttemptRecord | None) -> int:
    """Attempts are counted by the runs that took the version up (file_attempts) where known; a request
    whose run never started counts too."""
    return max(p.requests, record.attempts if record else 0)


def select_due(
    pending: Mapping[str, PendingVersion],
    *,
    now: datetime,
    in_flight: set[str],
    ledger_read: bool,
    attempts: Mapping[Version, AttemptRecord],
    base: timedelta,
    cap: timedelta,
) -> list[PendingVersion]:
    """The pending versions to request now, in arrival order.

    A version is left alone while a run for it is in flight. One that was requested before is requested
    again only when the ledger could be read this time (so the ledger, not a run's status, says it is not
    done) and its backoff has passed.
    """
    due = []
    for p in pending.values():
        if p.run_key is not None and p.run_key in in_flight:
            continue
        if p.requested_at is not None:
            if not ledger_read:
                continue
            record = attempts.get((p.file.key, p.file.etag))
            last = p.requested_at
            if record is not None:
                last = max(last, record.last_attempt_at.replace(tzinfo=UTC).timestamp())
            wait = backoff(attempts_so_far(p, record), base, cap).total_seconds()
            if now.timestamp() < last + wait:
                continue
        due.append(p)
    due.sort(key=lambda p: (p.file.last_modified, p.file.key, p.file.etag))
    return due
