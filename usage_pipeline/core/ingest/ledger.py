"""The ledger's answers about file versions: done, waiting, failing, acknowledged."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import duckdb
import polars as pl

from usage_pipeline.core.ingest import sql
from usage_pipeline.core.ingest.model import FileVersion
from usage_pipeline.core.storage.lake import has_table, registered, transact
from usage_pipeline.core.storage.values import naive_utc

Version = tuple[str, str]  # (file_key, etag)


@dataclass(frozen=True)
class AttemptRecord:
    """What file_attempts says of a version that was taken up but has no ledger row yet."""

    attempts: int
    last_attempt_at: datetime  # naive UTC
    last_run_id: str | None
    last_error: str | None


def _asked(files: Iterable[FileVersion]) -> pl.DataFrame:
    unique = {(f.key, f.etag): f for f in files}
    return pl.DataFrame(
        {
            "file_key": [k for k, _ in unique],
            "etag": [e for _, e in unique],
            "size_bytes": [f.size for f in unique.values()],
            "arrived_at": [naive_utc(f.last_modified) for f in unique.values()],
        },
        schema={
            "file_key": pl.String,
            "etag": pl.String,
            "size_bytes": pl.Int64,
            "arrived_at": pl.Datetime("us"),
        },
    )


def ledgered(conn: duckdb.DuckDBPyConnection, files: Iterable[FileVersion]) -> set[Version]:
    """The versions among `files` that have a ledger row: those are done, whatever happened to runs."""
    asked = _asked(files)
    if asked.is_empty() or not has_table(conn, "ingested_files"):
        return set()
    with registered(conn, {"asked": asked}):
        return {(key, etag) for key, etag in conn.execute(sql.LEDGERED_VERSIONS).fetchall()}


def attempts_of(
    conn: duckdb.DuckDBPyConnection, files: Iterable[FileVersion]
) -> dict[Version, AttemptRecord]:
    asked = _asked(files)
    if asked.is_empty() or not has_table(conn, "file_attempts"):
        return {}
    with registered(conn, {"asked": asked}):
        rows = conn.execute(sql.ATTEMPTS_OF).fetchall()
    return {(key, etag): AttemptRecord(*rest) for key, etag, *rest in rows}


def start_attempts(
    conn: duckdb.DuckDBPyConnection, files: Iterable[FileVersion], run_id: str | None, now: datetime
) -> None:
    """Count one more attempt for each version (not in the ledger) that this run takes up."""
    asked = _asked(files)
    if asked.is_empty():
        return

    def count() -> None:
        next_attempts = conn.sql(
            sql.NEXT_ATTEMPTS, params={"now": naive_utc(now), "run_id": run_id}
        ).to_arrow_table()
        conn.execute(sql.DELETE_ATTEMPTS_OF_ASKED)
        with registered(conn, {"next_attempts": next_attempts}):
            conn.execute(sql.INSERT_ATTEMPTS)

    with registered(conn, {"asked": asked}):
        transact(conn, count, what="counting attempts")


def delete_attempts(conn: duckdb.DuckDBPyConnection, files: Iterable[FileVersion]) -> None:
    """Forget the attempts of these versions (inside the transaction that writes their ledger rows)."""
    asked = _asked(files)
    if asked.is_empty():
        return
    with registered(conn, {"asked": asked}):
        conn.execute(sql.DELETE_ATTEMPTS_OF_ASKED)


def record_attempt_error(
    conn: duckdb.DuckDBPyConnection, file: FileVersion, run_id: str | None, error: str
) -> None:
    """Why this attempt at a version did not end in a ledger row; the version will be retried."""
    params = {"file_key": file.key, "etag": file.etag, "run_id": run_id, "error": error}
    transact(conn, lambda: conn.execute(sql.RECORD_ATTEMPT_ERROR, params), what="recording an error")


def dict_rows(
    conn: duckdb.DuckDBPyConnection, query: str, params: dict[str, object] | None = None
) -> list[dict[str, object]]:
    """A query's rows as column name -> value."""
    result = conn.execute(query, params)
    names = [d[0] for d in result.description or []]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def waiting_files(conn: duckdb.DuckDBPyConnection) -> list[dict[str, object]]:
    """Versions taken up by a run that have no ledger row yet, oldest first, with attempts and last error."""
    if not has_table(conn, "file_attempts"):
        return []
    return dict_rows(conn, sql.WAITING_FILES)


def failing_keys(conn: duckdb.DuckDBPyConnection) -> list[dict[str, object]]:
    """Keys whose newest version failed, oldest failure first, with since when and, when an operator
    acknowledged that version, by whom and why (`acknowledged_by` is None otherwise)."""
    if not has_table(conn, "ingested_files"):
        return []
    with _acknowledgements(conn):
        return dict_rows(conn, sql.FAILING_KEYS)


def newest_with_rejects(conn: duckdb.DuckDBPyConnection) -> list[dict[str, object]]:
    """Newest versions of keys that have rejected rows, oldest first, with their acknowledgement if any."""
    if not has_table(conn, "ingested_files"):
        return []
    with _acknowledgements(conn):
        return dict_rows(conn, sql.NEWEST_WITH_REJECTS)


@dataclass(frozen=True)
class Acknowledgement:
    """An operator's word that a file version will not be fixed: the state checks stop counting it."""

    file_key: str
    etag: str
    status: str
    failed_reason: str | None
    rows_rejected: int
    arrived_at: datetime  # naive UTC
    acknowledged_by: str
    acknowledged_at: datetime  # naive UTC
    reason: str


def acknowledge(
    conn: duckdb.DuckDBPyConnection, file_key: str, *, by: str, reason: str, now: datetime
) -> Acknowledgement | None:
    """Acknowledge the newest version of `file_key` (again: the new word replaces the old one), or None
    when the ledger has no version of that key. A newer version of the key is not covered."""

    def record() -> Acknowledgement | None:
        rows = conn.execute(sql.NEWEST_VERSION_OF_KEY, {"file_key": file_key}).fetchall()
        if not rows:
            return None
        ack = Acknowledgement(*rows[0], acknowledged_by=by, acknowledged_at=naive_utc(now), reason=reason)
        version = {"file_key": ack.file_key, "etag": ack.etag}
        conn.execute(sql.DELETE_ACKNOWLEDGEMENT, version)
        conn.execute(
            sql.INSERT_ACKNOWLEDGEMENT,
            {**version, "acknowledged_by": by, "acknowledged_at": ack.acknowledged_at, "reason": reason},
        )
        return ack

    return transact(conn, record, what=f"acknowledging {file_key}")


@contextmanager
def _acknowledgements(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """A ledger written before acknowledgements existed, opened read-only (so not given the new table
    yet), has none."""
    if has_table(conn, "file_acknowledgements"):
        yield
        return
    none = pl.DataFrame(
        schema={
            "file_key": pl.String,
            "etag": pl.String,
            "acknowledged_by": pl.String,
            "acknowledged_at": pl.Datetime("us"),
            "reason": pl.String,
        }
    )
    with registered(conn, {"file_acknowledgements": none}):
        yield
