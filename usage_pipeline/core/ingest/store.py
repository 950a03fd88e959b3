"""Writing one parsed file version to DuckDB: events, rejects and its ledger row in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from usage_pipeline.core.ingest import sql
from usage_pipeline.core.ingest.model import (
    STATUS_EMPTY,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    STATUS_WITH_ERRORS,
    ParsedFile,
)
from usage_pipeline.core.storage.lake import registered, transact
from usage_pipeline.core.storage.values import naive_utc

STATUS_WIDTH = len(STATUS_WITH_ERRORS) + 1  # the longest status, and a space


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file version, as its ledger row says."""

    key: str
    etag: str
    size_bytes: int
    status: str
    layout: str | None
    failed_reason: str | None
    failed_detail: str | None
    rows_total: int
    rows_accepted: int
    rows_duplicate: int
    rows_rejected: int
    already_ingested: bool = False  # the ledger had this version: nothing was written this time


def describe_outcome(
    outcome: FileOutcome, *, counts_width: int | None = None, max_detail: int | None = None
) -> str:
    """One line for a file version: status, row counts, key, and the reason of a failure.

    With `counts_width`, status and counts are padded into columns, for a table of files (key last);
    `max_detail` shortens a long failure detail to that many characters, cut between words with "…".
    """
    o = outcome
    counts = (
        f"total={o.rows_total} accepted={o.rows_accepted} duplicate={o.rows_duplicate} "
        f"rejected={o.rows_rejected}"
    )
    detail = o.failed_detail or ""
    if max_detail is not None and len(detail) > max_detail:
        words = " ".join(detail.split())
        if len(words) > max_detail:
            room = max(max_detail - 1, 0)  # one character for the "…"
            space = words.rfind(" ", 0, room + 1)
            # At the last word boundary that fits; a word longer than half the room (a long key or URL)
            # is cut inside, where textwrap.shorten would drop it whole.
            cut = words[:space] if space >= room // 2 and space > 0 else words[:room]
            words = cut.rstrip(" ,;:") + "…"
        detail = words
    reason = f"  {o.failed_reason}: {detail}" if o.failed_reason else ""
    if counts_width is None:
        return f"{o.status} {counts} {o.key}{reason}"
    return f"{o.status:<{STATUS_WIDTH}} {counts:<{counts_width}} {o.key}{reason}"


def _status(parsed: ParsedFile, rows_rejected: int) -> str:
    if parsed.status == "failed":
        return STATUS_FAILED
    if parsed.status == "empty":
        return STATUS_EMPTY
    return STATUS_WITH_ERRORS if rows_rejected else STATUS_SUCCEEDED


def _insert_events(
    conn: duckdb.DuckDBPyConnection,
    parsed: ParsedFile,
    ingested_at: datetime,
    stripe_dedup_window: timedelta,
) -> int:
    """Insert the events that have no stored twin; returns how many were inserted."""
    events = parsed.events
    if events.is_empty():
        return 0
    ts_lo, ts_hi = events["ts"].min(), events["ts"].max()
    if parsed.layout == "stripe":
        # A Stripe identifier's twin may carry a different timestamp (a client retry): look a window
        # beyond the batch's range, as Stripe itself deduplicates identifiers over a rolling window.
        statement = sql.INSERT_NEW_STRIPE_EVENTS
        ts_lo, ts_hi = ts_lo - stripe_dedup_window, ts_hi + stripe_dedup_window  # type: ignore[operator]
    else:
        statement = sql.INSERT_NEW_CHARGEBEE_EVENTS
    with registered(conn, {"batch": events.to_arrow()}):
        inserted = conn.execute(
            statement, {"ts_lo": ts_lo, "ts_hi": ts_hi, "ingested_at": ingested_at}
        ).fetchall()
    return int(inserted[0][0]) if inserted else 0


def ledger_outcome(conn: duckdb.DuckDBPyConnection, key: str, etag: str) -> FileOutcome | None:
    """The ledger's record of a file version, or None when it was never ingested."""
    rows = conn.execute(sql.LEDGER_ROW, {"file_key": key, "etag": etag}).fetchall()
    return FileOutcome(key, etag, *rows[0], already_ingested=True) if rows else None


def write_file_version(
    conn: duckdb.DuckDBPyConnection,
    parsed: ParsedFile,
    *,
    run_id: str | None,
    stripe_dedup_window: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> FileOutcome:
    """Commit a file version's events, rejects and ledger row together, or nothing at all.

    A version already in the ledger is left alone (the ledger's status is reported back), so a run that
    is retried, or two processes racing for the same file, never ingest it twice.
    """
    file = parsed.file
    ingested_at = naive_utc(now or datetime.now(UTC))

    def write() -> FileOutcome:
        existing = ledger_outcome(conn, file.key, file.etag)
        if existing is not None:
            conn.execute(sql.DELETE_ATTEMPT, {"file_key": file.key, "etag": file.etag})
            return existing
        accepted = _insert_events(conn, parsed, ingested_at, stripe_dedup_window)
        rows_rejected = parsed.rejects.height
        if rows_rejected:
            with registered(conn, {"rejects": parsed.rejects.to_arrow()}):
                conn.execute(sql.INSERT_REJECTS, {"ingested_at": ingested_at}).fetchall()
        rows_duplicate = parsed.rows_duplicate_in_file + (parsed.events.height - accepted)
        outcome = FileOutcome(
            key=file.key,
            etag=file.etag,
            size_bytes=file.size,
            status=_status(parsed, rows_rejected),
            layout=parsed.layout,
            failed_reason=parsed.failed_reason,
            failed_detail=parsed.failed_detail,
            rows_total=parsed.rows_total,
            rows_accepted=accepted,
            rows_duplicate=rows_duplicate,
            rows_rejected=rows_rejected,
        )
        conn.execute(
            sql.INSERT_LEDGER,
            {
                "file_key": file.key,
                "etag": file.etag,
                "size_bytes": file.size,
                "layout": parsed.layout,
                "format": parsed.format,
                "status": outcome.status,
                "failed_reason": parsed.failed_reason,
                "failed_detail": parsed.failed_detail,
                "rows_total": outcome.rows_total,
                "rows_accepted": accepted,
                "rows_duplicate": rows_duplicate,
                "rows_rejected": rows_rejected,
                "arrived_at": naive_utc(file.last_modified),
                "ingested_at": ingested_at,
                "run_id": run_id,
            },
        )
        # The version has its ledger row, so it no longer waits: both in one transaction.
        conn.execute(sql.DELETE_ATTEMPT, {"file_key": file.key, "etag": file.etag})
        return outcome

    return transact(conn, write, what=f"writing {file.key}")
