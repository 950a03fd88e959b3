"""Lake upkeep: what the lake's files and snapshots look like, and the DuckLake calls that tidy them.

Plain functions over a writing connection from `lake.connect` (DuckLake's dry-run of orphaned files is
refused on a read-only attach). Every call that changes the lake runs through `lake.transact`: in this
process's writer turn (other writers on the machine wait, aloud), one call per transaction (DuckLake
refuses to commit a flush and a merge together), and retried whole when another writer commits first.
Each DuckLake call is idempotent, so a retry or a re-run is always safe.

Verified on DuckDB 1.5.5 / DuckLake 1.0: `ducklake_merge_adjacent_files` keeps time travel intact (the
merged file keeps each row's snapshot), and the files it replaces are scheduled for deletion at once;
`ducklake_expire_snapshots` schedules the files that only expired snapshots could read. So whatever
`ducklake_cleanup_old_files` deletes, no retained snapshot needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from usage_pipeline.core.storage.lake import LAKE_ALIAS, Log, transact

# An unreferenced Parquet file younger than this is left alone: DuckLake writes a transaction's data
# files before its COMMIT puts them in the catalog, so a writer that is mid-transaction (an ingest, a
# close, another machine, an analyst's client; our writer turn covers only this machine's pipeline) has
# files on disk that no catalog row names yet. Deleting them would make its commit point at files that
# are gone. No transaction of the pipeline stays open for an hour. The same grace lets a query that
# started before a merge finish reading the files the merge replaced.
ORPHAN_GRACE = timedelta(hours=1)
# A data file under this size is "small": many of them make every scan open many files.
SMALL_FILE_BYTES = 1 << 20
# More small files than this in one table: time for a maintenance pass.
SMALL_FILE_LIMIT = 1000

_METADATA = f'"__ducklake_metadata_{LAKE_ALIAS}"'
_LAKE = f"'{LAKE_ALIAS}'"

# Per table of the current schema version: its live data files (not ended by a later snapshot), their
# bytes, how many are small, and its live delete files.
_TABLE_FILES = f"""
WITH data_files AS (
    SELECT table_id,
           count(*) AS files,
           sum(file_size_bytes) AS bytes,
           count(*) FILTER (WHERE file_size_bytes < $small) AS small
    FROM {_METADATA}.ducklake_data_file
    WHERE end_snapshot IS NULL
    GROUP BY table_id
), delete_files AS (
    SELECT table_id, count(*) AS files, sum(file_size_bytes) AS bytes
    FROM {_METADATA}.ducklake_delete_file
    WHERE end_snapshot IS NULL
    GROUP BY table_id
)
SELECT s.schema_name, t.table_name,
       coalesce(d.files, 0), coalesce(d.bytes, 0), coalesce(d.small, 0),
       coalesce(x.files, 0), coalesce(x.bytes, 0)
FROM {_METADATA}.ducklake_table AS t
JOIN {_METADATA}.ducklake_schema AS s ON s.schema_id = t.schema_id AND s.end_snapshot IS NULL
LEFT JOIN data_files AS d ON d.table_id = t.table_id
LEFT JOIN delete_files AS x ON x.table_id = t.table_id
WHERE t.end_snapshot IS NULL
ORDER BY s.schema_name, t.table_name
"""
_SNAPSHOTS = f"SELECT count(*), min(snapshot_time) FROM ducklake_snapshots({_LAKE})"
_SCHEDULED = f"SELECT count(*) FROM {_METADATA}.ducklake_files_scheduled_for_deletion"
_ORPHANS = f"SELECT path FROM ducklake_delete_orphaned_files({_LAKE}, dry_run => true, older_than => $cutoff)"

_FLUSH = f"SELECT coalesce(sum(rows_flushed), 0) FROM ducklake_flush_inlined_data({_LAKE})"
_MERGE = (
    "SELECT coalesce(sum(files_processed), 0), coalesce(sum(files_created), 0) "
    f"FROM ducklake_merge_adjacent_files({_LAKE})"
)
_EXPIRE = f"SELECT count(*) FROM ducklake_expire_snapshots({_LAKE}, older_than => $cutoff)"
_CLEANUP = f"SELECT count(*) FROM ducklake_cleanup_old_files({_LAKE}, older_than => $cutoff)"
_DELETE_ORPHANS = f"SELECT path FROM ducklake_delete_orphaned_files({_LAKE}, older_than => $cutoff)"


@dataclass(frozen=True)
class TableFiles:
    """One table's live files: what a scan of its current version opens."""

    table: str
    data_files: int
    data_bytes: int
    small_files: int
    delete_files: int
    delete_bytes: int
    rows: int


@dataclass(frozen=True)
class LakeStats:
    """The lake's files and snapshots at one moment."""

    tables: tuple[TableFiles, ...]
    snapshots: int
    oldest_snapshot: datetime | None
    # Files DuckLake already knows are garbage (merged away, or only read by expired snapshots): the
    # next cleanup deletes them once they are older than ORPHAN_GRACE.
    scheduled_for_deletion: int
    # Files under the data path that the catalog does not name, older than ORPHAN_GRACE.
    orphaned_files: tuple[str, ...]

    @property
    def data_files(self) -> int:
        return sum(t.data_files for t in self.tables)

    @property
    def delete_files(self) -> int:
        return sum(t.delete_files for t in self.tables)

    @property
    def bytes(self) -> int:
        """Bytes of the live data and delete files (what the current version of every table reads)."""
        return sum(t.data_bytes + t.delete_bytes for t in self.tables)

    @property
    def small_files(self) -> int:
        return sum(t.small_files for t in self.tables)

    def most_small_files(self) -> TableFiles | None:
        return max(self.tables, key=lambda t: t.small_files, default=None)


@dataclass(frozen=True)
class MaintenanceResult:
    """What one maintenance pass did, step by step, with the lake before and after."""

    before: LakeStats
    after: LakeStats
    retention: timedelta
    # Snapshots taken before this (00:00 UTC of the day now - retention falls on) were expired.
    expired_before: datetime
    rows_flushed: int
    files_merged: int
    merged_files_created: int
    snapshots_expired: int
    files_deleted: int
    orphans_deleted: tuple[str, ...]
    seconds: float


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"expected a timezone-aware time, got {moment!r}")
    return moment.astimezone(UTC)


def day_start(moment: datetime) -> datetime:
    """00:00 UTC of `moment`'s UTC day."""
    return datetime.combine(_utc(moment).date(), datetime.min.time(), UTC)


def catalog_cutoff(moment: datetime) -> datetime:
    """The `older_than` to give DuckLake for "before the day of `moment`": the last instant of the UTC
    day before it.

    On a SQLite catalog DuckLake compares snapshot times and deletion schedules with `older_than` by
    UTC day only (verified on DuckLake 1.0: a cutoff at 00:00 on day D expires a snapshot taken at 12:00
    on D, and a cutoff at 11:00 deletes files scheduled at 12:00). With the end of the previous day as
    cutoff, nothing from `moment`'s day or later qualifies on any catalog: a retention is kept to the
    day, rounded the safe way (up to a day longer, never shorter).
    """
    return day_start(moment) - timedelta(microseconds=1)


def _row_count(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> int:
    # count(*) rather than the files' record counts: it also counts rows still inlined in the catalog
    # and leaves out deleted ones.
    name = f"{_quote_identifier(LAKE_ALIAS)}.{_quote_identifier(schema)}.{_quote_identifier(table)}"
    return int(conn.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0])


def orphaned_files(conn: duckdb.DuckDBPyConnection, now: datetime) -> tuple[str, ...]:
    """Files under the data path that no catalog row names and that are older than ORPHAN_GRACE (a dry
    run of DuckLake's orphan deletion: nothing is deleted)."""
    return _paths(conn.execute(_ORPHANS, {"cutoff": _utc(now) - ORPHAN_GRACE}).fetchall())


def _paths(rows: list[tuple[object, ...]]) -> tuple[str, ...]:
    return tuple(sorted(str(row[0]) for row in rows))


def lake_stats(conn: duckdb.DuckDBPyConnection, now: datetime | None = None) -> LakeStats:
    """Per table: live data files, their bytes, small files, delete files and rows; the snapshots kept;
    files scheduled for deletion; orphaned files (older than ORPHAN_GRACE at `now`, default the clock)."""
    now = now or datetime.now(UTC)
    tables = tuple(
        TableFiles(
            table=table if schema == "main" else f"{schema}.{table}",
            data_files=int(files),
            data_bytes=int(data_bytes),
            small_files=int(small),
            delete_files=int(delete_files),
            delete_bytes=int(delete_bytes),
            rows=_row_count(conn, schema, table),
        )
        for schema, table, files, data_bytes, small, delete_files, delete_bytes in conn.execute(
            _TABLE_FILES, {"small": SMALL_FILE_BYTES}
        ).fetchall()
    )
    snapshots, oldest = conn.execute(_SNAPSHOTS).fetchall()[0]
    return LakeStats(
        tables=tables,
        snapshots=int(snapshots),
        oldest_snapshot=oldest.astimezone(UTC) if oldest is not None else None,
        scheduled_for_deletion=int(conn.execute(_SCHEDULED).fetchall()[0][0]),
        orphaned_files=orphaned_files(conn, now),
    )


def crowded_tables(stats: LakeStats, small_file_limit: int = SMALL_FILE_LIMIT) -> list[TableFiles]:
    """The tables with more than `small_file_limit` small data files: a maintenance pass would merge them."""
    return [t for t in stats.tables if t.small_files > small_file_limit]


def needs_maintenance(stats: LakeStats) -> bool:
    """Orphaned files, or a table with too many small files."""
    return bool(stats.orphaned_files or crowded_tables(stats))


def _step(
    conn: duckdb.DuckDBPyConnection,
    what: str,
    sql: str,
    params: dict[str, object] | None,
    log: Log,
) -> list[tuple[object, ...]]:
    """One DuckLake call in its own transaction, in the writer turn (retried whole on a conflict)."""
    started = time.perf_counter()
    rows = transact(conn, lambda: conn.execute(sql, params).fetchall(), what=f"lake maintenance: {what}")
    log(f"lake maintenance: {what} ({time.perf_counter() - started:.1f} s)")
    return rows


def maintain(
    conn: duckdb.DuckDBPyConnection,
    retention: timedelta,
    now: datetime,
    log: Log = lambda _message: None,
) -> MaintenanceResult:
    """Flush inlined rows, merge small files, expire snapshots older than `retention` (taken before the
    UTC day `now - retention` falls on), delete the files no retained snapshot reads, and delete orphaned
    files; each step in its own writer turn.

    Time travel (`AT (VERSION => n)`) keeps working for every snapshot younger than `retention`. Each
    invoice revision records the snapshot its close read (`invoice_revisions.snapshot_id`), so the
    retention (USAGE_LAKE_RETENTION, default 400 days) is what keeps a year of invoices auditable: a
    shorter one lets maintenance expire the snapshot an invoice still under audit was rated from.
    """
    if retention < timedelta(0):
        raise ValueError(f"USAGE_LAKE_RETENTION must not be negative, got {retention}")
    now = _utc(now)
    started = time.perf_counter()
    before = lake_stats(conn, now)
    expired_before = day_start(now - retention)

    def step(what: str, sql: str, cutoff: datetime | None = None) -> list[tuple[object, ...]]:
        return _step(conn, what, sql, None if cutoff is None else {"cutoff": cutoff}, log)

    # Rows of small commits are inlined in the catalog; flushed to Parquet, the merge can fold them in.
    rows_flushed = int(step("flushing inlined rows", _FLUSH)[0][0])
    files_merged, files_created = (int(v) for v in step("merging small files", _MERGE)[0])
    snapshots_expired = int(
        step(
            f"expiring snapshots taken before {expired_before:%Y-%m-%d} UTC",
            _EXPIRE,
            catalog_cutoff(expired_before),
        )[0][0]
    )
    # Only files DuckLake scheduled (merged away, or read only by expired snapshots), and only those
    # scheduled before the day of now - ORPHAN_GRACE: a query that started before a merge may still be
    # reading what it replaced. Files this pass merged away go at a later pass.
    files_deleted = int(step("deleting old files", _CLEANUP, catalog_cutoff(now - ORPHAN_GRACE))[0][0])
    # Orphans are judged by the file's own modification time, to the second (not by a catalog time).
    orphans = _paths(step("deleting orphaned files", _DELETE_ORPHANS, now - ORPHAN_GRACE))
    after = lake_stats(conn, now)
    result = MaintenanceResult(
        before=before,
        after=after,
        retention=retention,
        expired_before=expired_before,
        rows_flushed=rows_flushed,
        files_merged=files_merged,
        merged_files_created=files_created,
        snapshots_expired=snapshots_expired,
        files_deleted=files_deleted,
        orphans_deleted=orphans,
        seconds=time.perf_counter() - started,
    )
    return result
