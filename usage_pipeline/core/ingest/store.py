"""Writing one parsed file version to DuckDB: events, rejects and its ledger row in one transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl

from usage_pipeline.core.ingest import sql
from usage_pipeline.core.ingest.ledger import delete_attempts, ledgered
from usage_pipeline.core.ingest.model import (
    STATUS_EMPTY,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    STATUS_WITH_ERRORS,
    ParsedFile,
)
from usage_pipeline.core.storage.lake import memory_limited, registered, sql_strings, transact
from usage_pipeline.core.storage.values import naive_utc

STATUS_WIDTH = len(STATUS_WITH_ERRORS) + 1  # the longest status, and a space
# DuckDB's memory while it writes a big file (one read in chunks): its inserts stream, but the anti join
# against stored events of the file's time range (all of them twins when a big file is sent again) may
# build a large hash table, which then spills to disk instead of doubling the process.
BIG_FILE_MEMORY_LIMIT = "1GB"


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
    """Insert the events (the relation `batch`) that have no stored twin; returns how many were inserted."""
    time_range = parsed.event_time_range()
    if time_range is None:
        return 0
    ts_lo, ts_hi = time_range
    if parsed.layout == "stripe":
        # A Stripe identifier's twin may carry a different timestamp (a client retry): look a window
        # beyond the batch's range, as Stripe itself deduplicates identifiers over a rolling window.
        statement = sql.INSERT_NEW_STRIPE_EVENTS
        ts_lo, ts_hi = ts_lo - stripe_dedup_window, ts_hi + stripe_dedup_window
    else:
        statement = sql.INSERT_NEW_CHARGEBEE_EVENTS
    inserted = conn.execute(
        statement, {"ts_lo": ts_lo, "ts_hi": ts_hi, "ingested_at": ingested_at}
    ).fetchall()
    return int(inserted[0][0]) if inserted else 0


@contextmanager
def _relations(conn: duckdb.DuckDBPyConnection, parsed: ParsedFile) -> Iterator[None]:
    """A file's candidate events and rejects as the relations `batch` and `rejects`: its frames, or for a
    big file the views over its spilled chunks."""
    spill = parsed.spill
    if spill is None:
        with registered(conn, {"batch": parsed.events, "rejects": parsed.rejects}):
            yield
        return
    views = {
        "batch": (sql.SPILLED_BATCH, spill.event_files()),
        "rejects": (sql.SPILLED_REJECTS, spill.reject_files()),
    }
    with (
        memory_limited(conn, BIG_FILE_MEMORY_LIMIT),
        registered(conn, {"dropped": spill.dropped_rows().to_frame("source_row")}),
    ):
        try:
            for statement, files in views.values():
                if files:
                    conn.execute(statement.format(files=sql_strings(files)))
            yield
        finally:
            for name in views:
                conn.execute(sql.DROP_SPILLED.format(name=name))


def ledger_outcome(conn: duckdb.DuckDBPyConnection, key: str, etag: str) -> FileOutcome | None:
    """The ledger's record of a file version, or None when it was never ingested."""
    rows = conn.execute(sql.LEDGER_ROW, {"file_key": key, "etag": etag}).fetchall()
    return FileOutcome(key, etag, *rows[0], already_ingested=True) if rows else None


def _outcome(
    parsed: ParsedFile, accepted: int, run_id: str | None, ingested_at: datetime
) -> tuple[FileOutcome, dict[str, object]]:
    """A written file version's outcome, and its ledger row (the columns of sql.INSERT_LEDGER, in order)."""
    file, rows_rejected = parsed.file, parsed.rejects_count
    rows_duplicate = parsed.rows_duplicate_in_file + (parsed.events_count - accepted)
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
    row = {
        "file_key": file.key,
        "etag": file.etag,
        "size_bytes": file.size,
        "layout": parsed.layout,
        "format": parsed.format,
        "status": outcome.status,
        "failed_reason": parsed.failed_reason,
        "failed_detail": parsed.failed_detail,
        "rows_total": parsed.rows_total,
        "rows_accepted": accepted,
        "rows_duplicate": rows_duplicate,
        "rows_rejected": rows_rejected,
        "arrived_at": naive_utc(file.last_modified),
        "ingested_at": ingested_at,
        "run_id": run_id,
    }
    return outcome, row


def _write(
    conn: duckdb.DuckDBPyConnection,
    parsed: ParsedFile,
    run_id: str | None,
    stripe_dedup_window: timedelta,
    ingested_at: datetime,
) -> FileOutcome:
    """A file version's events, rejects and ledger row, inside the caller's transaction."""
    file = parsed.file
    existing = ledger_outcome(conn, file.key, file.etag)
    if existing is not None:
        conn.execute(sql.DELETE_ATTEMPT, {"file_key": file.key, "etag": file.etag})
        return existing
    rows_rejected = parsed.rejects_count
    with _relations(conn, parsed):
        accepted = _insert_events(conn, parsed, ingested_at, stripe_dedup_window)
        if rows_rejected:
            conn.execute(sql.INSERT_REJECTS, {"ingested_at": ingested_at}).fetchall()
    outcome, ledger_row = _outcome(parsed, accepted, run_id, ingested_at)
    conn.execute(sql.INSERT_LEDGER, ledger_row)
    # The version has its ledger row, so it no longer waits: both in one transaction.
    conn.execute(sql.DELETE_ATTEMPT, {"file_key": file.key, "etag": file.etag})
    return outcome


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
    ingested_at = naive_utc(now or datetime.now(UTC))
    return transact(
        conn,
        lambda: _write(conn, parsed, run_id, stripe_dedup_window, ingested_at),
        what=f"writing {parsed.file.key}",
    )


_LEDGER_SCHEMA = {
    "file_key": pl.String,
    "etag": pl.String,
    "size_bytes": pl.Int64,
    "layout": pl.String,
    "format": pl.String,
    "status": pl.String,
    "failed_reason": pl.String,
    "failed_detail": pl.String,
    "rows_total": pl.Int64,
    "rows_accepted": pl.Int64,
    "rows_duplicate": pl.Int64,
    "rows_rejected": pl.Int64,
    "arrived_at": pl.Datetime("us"),
    "ingested_at": pl.Datetime("us"),
    "run_id": pl.String,
}


def _group_batch(todo: Sequence[ParsedFile], layout: str, window: timedelta) -> pl.DataFrame | None:
    """The candidate events of the group's files of one layout, each with its file's place and window."""
    frames = []
    for ordinal, parsed in enumerate(todo):
        events = parsed.events
        if parsed.layout != layout or events.is_empty():
            continue
        ts_lo, ts_hi = events["ts"].min(), events["ts"].max()
        if layout == "stripe":
            ts_lo, ts_hi = ts_lo - window, ts_hi + window  # type: ignore[operator]
        frames.append(
            events.with_columns(
                pl.lit(ordinal, pl.Int32).alias("ordinal"),
                pl.lit(ts_lo, pl.Datetime("ms")).alias("win_lo"),
                pl.lit(ts_hi, pl.Datetime("ms")).alias("win_hi"),
            )
        )
    return pl.concat(frames, how="vertical") if frames else None


def _insert_group_events(
    conn: duckdb.DuckDBPyConnection,
    todo: Sequence[ParsedFile],
    ingested_at: datetime,
    stripe_dedup_window: timedelta,
) -> Counter[int]:
    """Insert the new events of the group's files; returns how many each file (by ordinal) stored."""
    accepted: Counter[int] = Counter()
    for layout, statement in (
        ("stripe", sql.NEW_STRIPE_EVENTS_OF_GROUP),
        ("chargebee", sql.NEW_CHARGEBEE_EVENTS_OF_GROUP),
    ):
        batch = _group_batch(todo, layout, stripe_dedup_window)
        if batch is None:
            continue
        params = {"ts_lo": batch["win_lo"].min(), "ts_hi": batch["win_hi"].max()}
        with registered(conn, {"group_batch": batch}):
            # execute, not the relation API: conn.sql(...).to_arrow_table() took 8x as long here
            new = conn.execute(statement, params).to_arrow_table()
        with registered(conn, {"new_group_events": new}):
            conn.execute(sql.INSERT_GROUP_EVENTS, {"ingested_at": ingested_at}).fetchall()
            accepted.update(dict(conn.execute(sql.ACCEPTED_PER_FILE).fetchall()))
    return accepted


def _write_group(
    conn: duckdb.DuckDBPyConnection,
    group: Sequence[ParsedFile],
    run_id: str | None,
    stripe_dedup_window: timedelta,
    ingested_at: datetime,
) -> list[FileOutcome]:
    """The group's files, inside the caller's transaction, with a handful of statements for all of them:
    on a lake every statement reads the catalog (~10-30 ms), whatever it carries."""
    done = ledgered(conn, [p.file for p in group])
    todo = [p for p in group if (p.file.key, p.file.etag) not in done]
    accepted = _insert_group_events(conn, todo, ingested_at, stripe_dedup_window)
    rejects = [p.rejects for p in todo if p.rejects.height]
    if rejects:
        with registered(conn, {"rejects": pl.concat(rejects, how="vertical")}):
            conn.execute(sql.INSERT_REJECTS, {"ingested_at": ingested_at}).fetchall()
    written: dict[tuple[str, str], FileOutcome] = {}
    ledger_rows = []
    for ordinal, parsed in enumerate(todo):
        outcome, ledger_row = _outcome(parsed, accepted[ordinal], run_id, ingested_at)
        written[(outcome.key, outcome.etag)] = outcome
        ledger_rows.append(ledger_row)
    if ledger_rows:
        with registered(conn, {"ledger_rows": pl.DataFrame(ledger_rows, schema=_LEDGER_SCHEMA)}):
            conn.execute(sql.INSERT_LEDGER_ROWS).fetchall()
    # Every version of the group has its ledger row now, so none waits: in the same transaction.
    delete_attempts(conn, [p.file for p in group])
    outcomes = []
    for parsed in group:
        version = (parsed.file.key, parsed.file.etag)
        outcome = written.get(version) or ledger_outcome(conn, *version)
        assert outcome is not None, version
        outcomes.append(outcome)
    return outcomes


def write_file_group(
    conn: duckdb.DuckDBPyConnection,
    group: Sequence[ParsedFile],
    *,
    run_id: str | None,
    stripe_dedup_window: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> list[FileOutcome]:
    """Commit several (small) file versions in one transaction, each whole with its ledger row: they share
    the commit, so each still commits completely or not at all.

    Each file is deduplicated against the stored events and the group's earlier files, as if each had had
    its own transaction in turn. Versions already in the ledger are left alone, as in write_file_version.
    """
    assert all(p.spill is None for p in group), "a big file read in chunks is written alone"
    ingested_at = naive_utc(now or datetime.now(UTC))
    first = group[0].file.key
    what = f"writing {first} and {len(group) - 1} more" if len(group) > 1 else f"writing {first}"
    return transact(
        conn, lambda: _write_group(conn, group, run_id, stripe_dedup_window, ingested_at), what=what
    )
