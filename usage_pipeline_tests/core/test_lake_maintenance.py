"""Lake upkeep on a real DuckLake lake: small files merged, snapshots expired, orphans deleted."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from filelock import FileLock

from usage_pipeline.core.storage.lake import Lake, LakeBusyError, connect, current_snapshot
from usage_pipeline.core.storage.maintenance import (
    ORPHAN_GRACE,
    SMALL_FILE_LIMIT,
    LakeStats,
    TableFiles,
    catalog_cutoff,
    crowded_tables,
    lake_stats,
    maintain,
    needs_maintenance,
)
from usage_pipeline.settings import Settings

ROWS_PER_INSERT = 20  # above DuckLake's inlining limit: each insert writes a Parquet file
YEAR = timedelta(days=400)


def _insert_meters(conn: duckdb.DuckDBPyConnection, batch: int, rows: int = ROWS_PER_INSERT) -> None:
    conn.execute(
        "INSERT INTO meters SELECT 'm' || x || '-' || $batch, 'event_' || $batch, NULL, 'count', 'value' "
        "FROM range($rows) t(x)",
        {"batch": batch, "rows": rows},
    )


def _meters(conn: duckdb.DuckDBPyConnection, version: int | None = None) -> list[tuple]:
    at = "" if version is None else f" AT (VERSION => {int(version)})"
    return conn.execute(f"SELECT * FROM meters{at} ORDER BY ALL").fetchall()


def _table(stats: LakeStats, name: str) -> TableFiles:
    return next(t for t in stats.tables if t.table == name)


def _parquet_files(lake: Lake) -> set[Path]:
    return set(Path(lake.data_location).rglob("*.parquet"))


def _aged(path: Path, age: timedelta) -> Path:
    path.write_bytes(b"PAR1 not really")
    stamp = time.time() - age.total_seconds()
    os.utime(path, (stamp, stamp))
    return path


def test_small_files_are_merged_with_the_data_and_time_travel_unchanged(lake: Lake, lake_conn) -> None:
    versions = []
    for batch in range(30):
        _insert_meters(lake_conn, batch)
        versions.append(current_snapshot(lake_conn))
    _insert_meters(lake_conn, 99, rows=5)  # inlined in the catalog, no file
    rows = _meters(lake_conn)
    history = {v: _meters(lake_conn, v) for v in versions}

    before = lake_stats(lake_conn)
    meters = _table(before, "meters")
    assert (meters.data_files, meters.small_files, meters.rows) == (30, 30, 30 * ROWS_PER_INSERT + 5)
    assert meters.data_bytes > 0 and before.orphaned_files == () and before.snapshots > 30

    messages: list[str] = []
    result = maintain(lake_conn, YEAR, datetime.now(UTC), messages.append)

    assert result.rows_flushed == 5
    assert result.files_merged == 31 and result.merged_files_created == 1
    assert result.snapshots_expired == 0 and result.orphans_deleted == ()
    after = _table(result.after, "meters")
    assert after.data_files == 1 and after.rows == meters.rows
    assert result.after.data_files < result.before.data_files
    assert result.after.bytes < result.before.bytes
    assert _meters(lake_conn) == rows
    assert {v: _meters(lake_conn, v) for v in versions} == history
    assert any("lake maintenance: merging small files" in m for m in messages)


def test_replaced_files_are_deleted_by_a_later_pass_only(lake: Lake, lake_conn) -> None:
    for batch in range(12):
        _insert_meters(lake_conn, batch)
    rows = _meters(lake_conn)
    first = maintain(lake_conn, YEAR, datetime.now(UTC))
    # A query that began before the merge may still read the replaced files: they stay for now.
    assert first.files_deleted == 0 and first.after.scheduled_for_deletion == 12
    assert len(_parquet_files(lake)) == 13

    later = maintain(lake_conn, YEAR, datetime.now(UTC) + timedelta(days=2))

    assert later.files_deleted == 12 and later.after.scheduled_for_deletion == 0
    assert len(_parquet_files(lake)) == 1
    assert _meters(lake_conn) == rows


def test_old_orphans_are_reported_and_deleted_young_ones_kept(lake: Lake, lake_conn) -> None:
    _insert_meters(lake_conn, 1)
    folder = Path(lake.data_location) / "main" / "meters"
    old = _aged(folder / "left-by-a-crashed-writer.parquet", ORPHAN_GRACE + timedelta(minutes=30))
    young = _aged(folder / "a-writer-still-committing.parquet", ORPHAN_GRACE - timedelta(minutes=30))

    stats = lake_stats(lake_conn)
    assert stats.orphaned_files == (str(old),)
    assert needs_maintenance(stats)

    result = maintain(lake_conn, YEAR, datetime.now(UTC))

    assert result.orphans_deleted == (str(old),)
    assert not old.exists() and young.exists()
    assert result.after.orphaned_files == () and not needs_maintenance(result.after)
    assert len(_meters(lake_conn)) == ROWS_PER_INSERT


def test_snapshots_younger_than_the_retention_stay_queryable(lake_conn) -> None:
    _insert_meters(lake_conn, 1)
    first = current_snapshot(lake_conn)
    expected = _meters(lake_conn, first)
    _insert_meters(lake_conn, 2)

    # Even a retention of an hour keeps today's snapshots: cutoffs are rounded down to the UTC day
    # (DuckLake compares them by day on a SQLite catalog).
    for retention in (YEAR, timedelta(hours=1), timedelta(0)):
        result = maintain(lake_conn, retention, datetime.now(UTC))
        assert result.snapshots_expired == 0
        assert _meters(lake_conn, first) == expected


def test_snapshots_older_than_the_retention_are_expired(lake_conn) -> None:
    _insert_meters(lake_conn, 1)
    first = current_snapshot(lake_conn)
    _insert_meters(lake_conn, 2)
    rows = _meters(lake_conn)
    snapshots = lake_stats(lake_conn).snapshots

    result = maintain(lake_conn, timedelta(days=1), datetime.now(UTC) + timedelta(days=3))

    assert result.snapshots_expired >= snapshots - 1
    assert result.after.oldest_snapshot is not None
    assert result.after.oldest_snapshot > datetime.now(UTC) - timedelta(minutes=5)
    with pytest.raises(duckdb.Error):
        _meters(lake_conn, first)
    assert _meters(lake_conn) == rows


def test_maintenance_waits_for_the_writer_turn(tmp_path: Path) -> None:
    lake = Lake(
        catalog=f"sqlite:{tmp_path / 'usage.sqlite'}",
        data_path=str(tmp_path / "lake"),
        busy_timeout_seconds=1,
    )
    with connect(lake) as conn:
        _insert_meters(conn, 1)
        other_writer = FileLock(lake.location + ".write-lock", thread_local=False)
        with other_writer, pytest.raises(LakeBusyError, match="lake maintenance"):
            maintain(conn, YEAR, datetime.now(UTC))


def test_cutoffs_are_the_end_of_the_previous_utc_day() -> None:
    noon = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    assert catalog_cutoff(noon) == datetime(2026, 6, 14, 23, 59, 59, 999999, tzinfo=UTC)
    with pytest.raises(ValueError):
        catalog_cutoff(datetime(2026, 6, 15, 12, 0))


def test_too_many_small_files_in_one_table_is_a_problem() -> None:
    def stats(small: int) -> LakeStats:
        table = TableFiles("usage_events", small, small * 1000, small, 0, 0, small * 10)
        return LakeStats(
            (table,), snapshots=2, oldest_snapshot=None, scheduled_for_deletion=0, orphaned_files=()
        )

    assert crowded_tables(stats(SMALL_FILE_LIMIT)) == [] and not needs_maintenance(stats(SMALL_FILE_LIMIT))
    crowded = stats(SMALL_FILE_LIMIT + 1)
    assert [t.table for t in crowded_tables(crowded)] == ["usage_events"] and needs_maintenance(crowded)


def test_default_retention_covers_a_year_of_invoices() -> None:
    assert Settings().lake_retention == timedelta(days=400)
    assert Settings(lake_retention="P30D").lake_retention == timedelta(days=30)
