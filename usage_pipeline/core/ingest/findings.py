"""The ingest asset checks as plain functions: what each check found, with examples for the UI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

from usage_pipeline.core.ingest import sql
from usage_pipeline.core.ingest.ledger import waiting_files
from usage_pipeline.core.ingest.model import STATUS_FAILED
from usage_pipeline.core.ingest.store import FileOutcome

Rows = list[dict[str, object]]


@dataclass
class CheckFinding:
    """One check's verdict: passed or not, a one-line summary, counts and example rows."""

    passed: bool
    summary: str
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, Rows] = field(default_factory=dict)


def _rows(conn: duckdb.DuckDBPyConnection, query: str, params: dict[str, object]) -> Rows:
    result = conn.execute(query, params)
    names = [d[0] for d in result.description or []]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def file_row(o: FileOutcome) -> dict[str, object]:
    return {
        "file": o.key,
        "status": o.status,
        "reason": o.failed_reason or "",
        "detail": o.failed_detail or "",
        "total": o.rows_total,
        "accepted": o.rows_accepted,
        "duplicate": o.rows_duplicate,
        "rejected": o.rows_rejected,
    }


def failed_files(conn: duckdb.DuckDBPyConnection, outcomes: list[FileOutcome]) -> CheckFinding:
    """ERROR: a file of this run could not be ingested at all."""
    failed = [o for o in outcomes if o.status == STATUS_FAILED and not o.already_ingested]
    outstanding = int(conn.execute(sql.OUTSTANDING_FAILED_KEYS).fetchall()[0][0])
    summary = (
        f"{len(failed)} of {len(outcomes)} files failed in this run"
        if failed
        else f"no failed file among the {len(outcomes)} files of this run"
    )
    return CheckFinding(
        passed=not failed,
        summary=summary,
        counts={"failed_files": len(failed), "outstanding_failed_keys": outstanding},
        examples={"failed files": [file_row(o) for o in failed[:50]]},
    )


def rejected_rows(
    conn: duckdb.DuckDBPyConnection, outcomes: list[FileOutcome], since: datetime, sample: int = 20
) -> CheckFinding:
    """WARN: rows of this run's files were rejected; which files, which codes, which rows."""
    with_rejects = [o for o in outcomes if o.rows_rejected and not o.already_ingested]
    keys = sorted({o.key for o in with_rejects})
    counts: dict[str, int] = {"files_with_rejects": len(with_rejects)}
    examples: dict[str, Rows] = {"files with rejected rows": [file_row(o) for o in with_rejects[:50]]}
    if keys:
        params = {"since": since, "keys": keys}
        for row in _rows(conn, sql.REJECT_CODE_COUNTS, params):
            counts[str(row["error_code"])] = int(row["n"])  # type: ignore[call-overload]
        examples["sample of rejected rows"] = _rows(conn, sql.REJECT_SAMPLES, {**params, "limit": sample})
    total = sum(o.rows_rejected for o in with_rejects)
    summary = f"{total} rows rejected in {len(with_rejects)} files" if with_rejects else "no rejected rows"
    return CheckFinding(passed=not with_rejects, summary=summary, counts=counts, examples=examples)


def row_counts_balance(conn: duckdb.DuckDBPyConnection, run_id: str, since: datetime) -> CheckFinding:
    """ERROR: rows_total = accepted + duplicate + rejected, and the stored rows match the ledger."""
    bad = _rows(conn, sql.UNBALANCED_FILES, {"run_id": run_id, "since": since})
    ledger_wide = int(conn.execute(sql.UNBALANCED_LEDGER_COUNT).fetchall()[0][0])
    passed = not bad and ledger_wide == 0
    summary = (
        "every file's rows add up and match the stored rows"
        if passed
        else f"{len(bad)} files of this run and {ledger_wide} ledger rows do not add up"
    )
    return CheckFinding(
        passed=passed,
        summary=summary,
        counts={"unbalanced_run_files": len(bad), "unbalanced_ledger_rows": ledger_wide},
        examples={"unbalanced files": bad},
    )


def dedup_keys_unique(
    conn: duckdb.DuckDBPyConnection, since: datetime, stripe_window: timedelta
) -> CheckFinding:
    """ERROR: no dedup key occurs twice among the events in the time range this run wrote to."""
    ts_lo, ts_hi, written = conn.execute(sql.RUN_EVENT_TIME_RANGE, {"since": since}).fetchall()[0]
    if not written:
        return CheckFinding(True, "no events written by this run", counts={"events_checked_window": 0})
    dupes = _rows(conn, sql.DUPLICATE_KEYS, {"ts_lo": ts_lo - stripe_window, "ts_hi": ts_hi + stripe_window})
    summary = (
        f"{len(dupes)} dedup keys stored more than once" if dupes else "dedup keys are unique"
    ) + f" (events between {ts_lo - stripe_window} and {ts_hi + stripe_window} UTC)"
    return CheckFinding(
        passed=not dupes,
        summary=summary,
        counts={"duplicate_keys": len(dupes), "events_written": int(written)},
        examples={"duplicate keys": dupes},
    )


def files_waiting(conn: duckdb.DuckDBPyConnection, now: datetime) -> CheckFinding:
    """ERROR: file versions that a run took up and that still have no ledger row after an error or a retry.

    They are not lost (the sensor requests them again with backoff until the ledger has them), but
    someone should know: S3 may be refusing them, or the store may be busy.
    """
    waiting = [
        row
        for row in waiting_files(conn)
        if row["last_error"] is not None or int(row["attempts"]) >= 2  # type: ignore[call-overload]
    ]
    rows = [
        {
            "file": row["file_key"],
            "etag": row["etag"],
            "attempts": row["attempts"],
            "waiting_for": _age(now, row["first_attempt_at"]),  # type: ignore[arg-type]
            "last_error": row["last_error"] or "",
            "last_run": row["last_run_id"] or "",
        }
        for row in waiting
    ]
    summary = (
        f"{len(rows)} file versions are still waiting for a ledger row after failed attempts "
        f"(oldest: {rows[0]['file']}, {rows[0]['attempts']} attempts: {rows[0]['last_error']})"
        if rows
        else "no file version is waiting after a failed attempt"
    )
    return CheckFinding(
        passed=not rows,
        summary=summary,
        counts={"files_waiting": len(rows)},
        examples={"waiting files (oldest first)": rows[:50]},
    )


def _age(now: datetime, since: datetime) -> str:
    seconds = max(0, int((now.replace(tzinfo=None) - since).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"
