"""The ingest asset checks as plain functions: what each check found, with examples for the UI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

from usage_pipeline.core.ingest import sql
from usage_pipeline.core.ingest.ledger import dict_rows, failing_keys, newest_with_rejects, waiting_files

Rows = list[dict[str, object]]


@dataclass
class CheckFinding:
    """One check's verdict: passed or not, a one-line summary, counts and example rows."""

    passed: bool
    summary: str
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, Rows] = field(default_factory=dict)


def _unacknowledged(rows: Rows) -> tuple[Rows, int]:
    """The rows no operator acknowledged, and how many were acknowledged."""
    open_rows = [row for row in rows if row["acknowledged_by"] is None]
    return open_rows, len(rows) - len(open_rows)


def failed_files(conn: duckdb.DuckDBPyConnection, now: datetime) -> CheckFinding:
    """ERROR: keys whose newest version failed and that no operator acknowledged.

    The state of the ledger, not of the last run: a later clean run, or an empty one, leaves the check
    red; a newer version of the key that does not fail, or `usage-pipeline files --ack`, turns it green.
    """
    failing, acknowledged = _unacknowledged(failing_keys(conn))
    rows = [
        {
            "file": key["file_key"],
            "reason": key["failed_reason"] or "",
            "detail": key["failed_detail"] or "",
            "failing_since_utc": key["failing_since"],
            "failing_for": _age(now, key["failing_since"]),  # type: ignore[arg-type]
            "failed_versions": key["failed_versions"],
            "etag": key["etag"],
            "run": key["run_id"] or "",
        }
        for key in failing
    ]
    counts = {"failing_keys": len(rows), "acknowledged_failing_keys": acknowledged}
    for row in rows:
        counts[str(row["reason"])] = counts.get(str(row["reason"]), 0) + 1
    summary = (
        f"keys whose newest version failed: {len(rows)}; the oldest, {rows[0]['file']}, has failed "
        f"for {rows[0]['failing_for']} ({rows[0]['reason']})"
        if rows
        else "no key's newest version failed"
    )
    if acknowledged:
        summary += f" (acknowledged and not counted: {acknowledged})"
    return CheckFinding(
        passed=not rows,
        summary=summary,
        counts=counts,
        examples={"failing files (oldest first)": rows},
    )


def rejected_rows(conn: duckdb.DuckDBPyConnection, sample: int = 20) -> CheckFinding:
    """WARN: newest versions of keys that have rejected rows and that no operator acknowledged; which
    files, which codes, which rows (read from those versions' rejects only)."""
    versions, acknowledged = _unacknowledged(newest_with_rejects(conn))
    rows_rejected = sum(int(v["rows_rejected"]) for v in versions)  # type: ignore[call-overload]
    counts: dict[str, int] = {
        "files_with_rejects": len(versions),
        "rows_rejected": rows_rejected,
        "acknowledged_files_with_rejects": acknowledged,
    }
    examples: dict[str, Rows] = {
        "files with rejected rows (oldest first)": [
            {
                "file": v["file_key"],
                "rejected": v["rows_rejected"],
                "total": v["rows_total"],
                "ingested_at_utc": v["ingested_at"],
                "etag": v["etag"],
                "run": v["run_id"] or "",
            }
            for v in versions
        ]
    }
    if versions:
        params = {
            "since": min(v["ingested_at"] for v in versions),  # type: ignore[type-var]
            "keys": [v["file_key"] for v in versions],
            "etags": [v["etag"] for v in versions],
        }
        for row in dict_rows(conn, sql.REJECT_CODE_COUNTS, params):
            counts[str(row["error_code"])] = int(row["n"])  # type: ignore[call-overload]
        examples["sample of rejected rows"] = dict_rows(conn, sql.REJECT_SAMPLES, {**params, "limit": sample})
    summary = (
        f"newest file versions with rejected rows: {len(versions)} (rows rejected: {rows_rejected})"
        if versions
        else "no newest file version has rejected rows"
    )
    if acknowledged:
        summary += f" (acknowledged and not counted: {acknowledged})"
    return CheckFinding(passed=not versions, summary=summary, counts=counts, examples=examples)


def row_counts_balance(conn: duckdb.DuckDBPyConnection, run_id: str, since: datetime) -> CheckFinding:
    """ERROR: rows_total = accepted + duplicate + rejected, and the stored rows match the ledger."""
    bad = dict_rows(conn, sql.UNBALANCED_FILES, {"run_id": run_id, "since": since})
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
    window = {"ts_lo": ts_lo - stripe_window, "ts_hi": ts_hi + stripe_window}
    hashes = [h for (h,) in conn.execute(sql.DUPLICATE_KEY_HASHES, window).fetchall()]
    dupes = dict_rows(conn, sql.DUPLICATE_KEYS, {**window, "hashes": hashes}) if hashes else []
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
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"
