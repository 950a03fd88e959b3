"""The lake_health check: the lake's file counts, small files, snapshots and orphans, without changing it."""

import dagster as dg

from usage_pipeline.core.storage.maintenance import (
    ORPHAN_GRACE,
    SMALL_FILE_BYTES,
    SMALL_FILE_LIMIT,
    LakeStats,
    crowded_tables,
    lake_stats,
)
from usage_pipeline.core.text import plural
from usage_pipeline.defs.maintenance.assets import LAKE_FILES, LAKE_GROUP
from usage_pipeline.defs.metadata import check_spec_metadata, table_entries
from usage_pipeline.defs.resources import PipelineSettings, UsageLake, infrastructure_failures

_TABLE_COLUMNS = ["table", "data files", "small files", "delete files", "rows", "bytes"]


def health_problems(stats: LakeStats) -> list[str]:
    """What a maintenance pass would fix, in words: orphaned files, tables with too many small files."""
    problems = []
    if stats.orphaned_files:
        problems.append(
            f"{plural(len(stats.orphaned_files), 'orphaned file')} older than {ORPHAN_GRACE} under the "
            "lake's data path"
        )
    crowded = crowded_tables(stats)
    if crowded:
        tables = ", ".join(f"{t.table} ({t.small_files:,})" for t in crowded)
        problems.append(
            f"more than {SMALL_FILE_LIMIT:,} data files under {SMALL_FILE_BYTES:,} bytes in {tables}"
        )
    return problems


def lake_health_result(stats: LakeStats) -> dg.AssetCheckResult:
    """WARN when orphaned files exist or a table has too many small files; metadata shows the counts."""
    problems = health_problems(stats)
    tables = sorted(
        (
            (t.table, t.data_files, t.small_files, t.delete_files, t.rows, t.data_bytes + t.delete_bytes)
            for t in stats.tables
        ),
        key=lambda row: (-row[1], row[0]),
    )
    worst = stats.most_small_files()
    metadata: dict[str, dg.RawMetadataValue] = {
        "data_files": stats.data_files,
        "small_files": stats.small_files,
        "most_small_files_in_one_table": worst.small_files if worst else 0,
        "small_file_limit": SMALL_FILE_LIMIT,
        "small_file_bytes": SMALL_FILE_BYTES,
        "delete_files": stats.delete_files,
        "bytes": stats.bytes,
        "snapshots_retained": stats.snapshots,
        "oldest_snapshot": stats.oldest_snapshot.isoformat() if stats.oldest_snapshot else "none",
        "scheduled_for_deletion": stats.scheduled_for_deletion,
        "orphaned_files": len(stats.orphaned_files),
        **table_entries("tables", tables, _TABLE_COLUMNS),
        **table_entries("orphaned", [(path,) for path in stats.orphaned_files], ["path"]),
    }
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description="; ".join(problems) + ": run lake_maintenance" if problems else None,
    )


@dg.asset_check(
    asset=LAKE_FILES,
    name="lake_health",
    description=(
        f"No orphaned file (older than {ORPHAN_GRACE}) under the lake's data path and no table with "
        f"more than {SMALL_FILE_LIMIT:,} data files under {SMALL_FILE_BYTES // (1 << 20)} MiB. When it "
        "warns, run lake_maintenance (WARN: reads stay correct, they get slower and the disk fills)."
    ),
    blocking=False,
    metadata=check_spec_metadata(LAKE_GROUP),
)
def lake_health(lake: UsageLake, settings: PipelineSettings) -> dg.AssetCheckResult:
    # A writing connection: DuckLake refuses even a dry run of its orphan search on a read-only attach.
    # Nothing is written (no turn is taken) and nothing is deleted.
    with infrastructure_failures(settings.get()), lake.get_connection() as conn:
        stats = lake_stats(conn)
    return lake_health_result(stats)
