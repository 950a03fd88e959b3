"""The lake_files asset: materializing it is one pass of DuckLake upkeep over the whole lake."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from usage_pipeline.core.storage.maintenance import LakeStats, MaintenanceResult, maintain
from usage_pipeline.core.text import plural
from usage_pipeline.defs.metadata import OWNERS, table_entries
from usage_pipeline.defs.resources import PipelineSettings, UsageLake, infrastructure_failures
from usage_pipeline.settings import definition_settings

LAKE_GROUP = "lake"
LAKE_FILES = dg.AssetKey("lake_files")

_TABLE_COLUMNS = [
    "table",
    "data files before",
    "data files after",
    "small files after",
    "delete files after",
    "rows",
    "bytes before",
    "bytes after",
]


def _iso_days(duration: timedelta) -> str:
    """A retention as the README writes it (P400D), or in seconds when it is not whole days."""
    if duration % timedelta(days=1) == timedelta(0):
        return f"P{duration.days}D"
    return f"PT{int(duration.total_seconds())}S"


def describe(result: MaintenanceResult) -> str:
    """One line for the log and the UI: what the pass did."""
    before, after = result.before, result.after
    return (
        f"merged {plural(result.files_merged, 'data file')} into {result.merged_files_created}, "
        f"flushed {plural(result.rows_flushed, 'inlined row')}, expired "
        f"{plural(result.snapshots_expired, 'snapshot')} taken before {result.expired_before:%Y-%m-%d} UTC, "
        f"deleted {plural(result.files_deleted, 'old file')} and "
        f"{plural(len(result.orphans_deleted), 'orphaned file')}; live data files "
        f"{before.data_files:,} -> {after.data_files:,}, bytes {before.bytes:,} -> {after.bytes:,}"
    )


def _table_rows(before: LakeStats, after: LakeStats) -> list[tuple[object, ...]]:
    earlier = {t.table: t for t in before.tables}
    rows = []
    for table in after.tables:
        old = earlier.get(table.table)
        rows.append(
            (
                table.table,
                old.data_files if old else 0,
                table.data_files,
                table.small_files,
                table.delete_files,
                table.rows,
                old.data_bytes + old.delete_bytes if old else 0,
                table.data_bytes + table.delete_bytes,
            )
        )
    # The tables with files first: an empty table has nothing to show.
    return sorted(rows, key=lambda row: (-int(row[1]) - int(row[2]), str(row[0])))


def maintenance_metadata(result: MaintenanceResult) -> "dict[str, dg.RawMetadataValue]":
    """What the pass did and the lake before and after, as the materialization's metadata."""
    before, after = result.before, result.after
    return {
        "summary": dg.MetadataValue.text(describe(result)),
        "retention": _iso_days(result.retention),
        "expired_before": result.expired_before.isoformat(),
        "rows_flushed": result.rows_flushed,
        "files_merged": result.files_merged,
        "merged_files_created": result.merged_files_created,
        "snapshots_expired": result.snapshots_expired,
        "old_files_deleted": result.files_deleted,
        "orphans_deleted": len(result.orphans_deleted),
        "data_files_before": before.data_files,
        "data_files_after": after.data_files,
        "small_files_after": after.small_files,
        "bytes_before": before.bytes,
        "bytes_after": after.bytes,
        "snapshots_retained": after.snapshots,
        "oldest_snapshot": after.oldest_snapshot.isoformat() if after.oldest_snapshot else "none",
        "scheduled_for_deletion": after.scheduled_for_deletion,
        "seconds": round(result.seconds, 3),
        **table_entries("tables", _table_rows(before, after), _TABLE_COLUMNS),
        **table_entries("orphaned_files_deleted", [(path,) for path in result.orphans_deleted], ["path"]),
    }


def build_lake_files_asset(retention: timedelta) -> dg.AssetsDefinition:
    """The asset for a retention (USAGE_LAKE_RETENTION, read when the definitions are built)."""

    # No pool. Every DuckLake call below runs in the lake's writer turn (lake.transact), which already
    # serialises it against each ingest and close transaction on this machine, and a commit that still
    # conflicts is retried whole. The "period_close" pool orders closes so that invoice revisions are
    # numbered in order; maintenance adds no revision and expires nothing a close within the retention
    # reads, so making it wait behind closes (or closes behind it) would buy nothing.
    @dg.asset(
        key=LAKE_FILES,
        group_name=LAKE_GROUP,
        kinds={"duckdb"},
        owners=list(OWNERS),
        tags={"domain": LAKE_GROUP},
        description=(
            "The lake's Parquet files and snapshots. Materializing it is one pass of upkeep: flush "
            "inlined rows, merge small files, expire snapshots older than USAGE_LAKE_RETENTION "
            f"({_iso_days(retention)}), delete the files no retained snapshot reads and orphaned files "
            "older than an hour. Time travel keeps working within the retention."
        ),
    )
    def lake_files(
        context: dg.AssetExecutionContext, lake: UsageLake, settings: PipelineSettings
    ) -> dg.MaterializeResult:
        with infrastructure_failures(settings.get()), lake.get_connection() as conn:
            result = maintain(conn, retention, now=datetime.now(UTC), log=context.log.info)
        context.log.info(describe(result))
        return dg.MaterializeResult(metadata=maintenance_metadata(result))

    return lake_files


@dg.definitions
def lake_definitions() -> dg.Definitions:
    """Built with the settings being loaded: the retention is USAGE_LAKE_RETENTION."""
    return dg.Definitions(assets=[build_lake_files_asset(definition_settings().lake_retention)])
