"""The lake_maintenance job: one pass of DuckLake upkeep (the lake_files asset), then lake_health."""

import dagster as dg

from usage_pipeline.defs.maintenance.assets import LAKE_FILES

# The selection of an asset includes its checks: lake_health runs after the pass and shows its result.
lake_maintenance_job = dg.define_asset_job(
    "lake_maintenance",
    selection=dg.AssetSelection.assets(LAKE_FILES),
    description=(
        "Merge small files, expire snapshots older than USAGE_LAKE_RETENTION, delete old and orphaned "
        "files; then check the lake's health. Safe to run at any time, re-runs are harmless."
    ),
    executor_def=dg.in_process_executor,
)
