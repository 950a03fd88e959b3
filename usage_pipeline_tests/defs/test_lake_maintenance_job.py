"""The lake_maintenance job run through Dagster (test instance, temporary lake), its check and schedule."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

from usage_pipeline.core.storage.lake import connect
from usage_pipeline.core.storage.maintenance import SMALL_FILE_LIMIT, LakeStats, TableFiles
from usage_pipeline.definitions import build_definitions
from usage_pipeline.defs.maintenance.assets import LAKE_FILES, build_lake_files_asset
from usage_pipeline.defs.maintenance.checks import lake_health, lake_health_result
from usage_pipeline.defs.resources import build_resources
from usage_pipeline.settings import Settings, lake_of

FILES = 8


def _small_files(settings: Settings) -> Path:
    """FILES small Parquet files in `meters`, and an orphan two hours old; returns the orphan."""
    lake = lake_of(settings)
    with connect(lake) as conn:
        for batch in range(FILES):
            conn.execute(
                "INSERT INTO meters SELECT 'm' || x || '-' || $b, 'e', NULL, 'count', 'value' "
                "FROM range(20) t(x)",
                {"b": batch},
            )
    orphan = Path(lake.data_location) / "main" / "meters" / "orphan.parquet"
    orphan.write_bytes(b"PAR1")
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    return orphan


def _evaluation(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "lake_health"]
    return evaluation


def test_the_job_merges_deletes_orphans_and_reports_health(
    settings: Settings, instance: dg.DagsterInstance
) -> None:
    orphan = _small_files(settings)
    defs = build_definitions(settings)

    # The check on its own: it looks, it does not touch.
    alone = dg.materialize(
        [build_lake_files_asset(settings.lake_retention), lake_health],
        selection=dg.AssetSelection.checks(lake_health),
        resources=build_resources(settings),
        instance=instance,
    )
    warned = _evaluation(alone)
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert (
        warned.description
        == "1 orphaned file older than 1:00:00 under the lake's data path: run lake_maintenance"
    )
    assert warned.metadata["orphaned_files"].value == 1
    assert warned.metadata["data_files"].value == FILES
    assert orphan.exists()

    result = defs.resolve_job_def("lake_maintenance").execute_in_process(instance=instance)

    assert result.success
    (materialization,) = result.asset_materializations_for_node("lake_files")
    metadata = materialization.metadata
    assert metadata["files_merged"].value == FILES
    assert metadata["data_files_before"].value == FILES and metadata["data_files_after"].value == 1
    assert metadata["orphans_deleted"].value == 1
    assert metadata["retention"].value == "P400D"
    assert str(metadata["summary"].value).startswith(f"merged {FILES} data files into 1")
    assert isinstance(metadata["tables"], dg.TableMetadataValue)
    assert metadata["tables"].records[0].data["table"] == "meters"
    assert not orphan.exists()
    healthy = _evaluation(result)
    assert healthy.passed
    assert healthy.metadata["orphaned_files"].value == 0
    assert healthy.metadata["snapshots_retained"].value > FILES
    assert isinstance(healthy.metadata["tables"], dg.TableMetadataValue)


def test_the_asset_and_the_schedule_as_the_ui_shows_them(settings: Settings) -> None:
    defs = build_definitions(Settings(**{**settings.model_dump(), "lake_retention": "P30D"}))
    spec = next(iter(defs.resolve_assets_def(LAKE_FILES).specs))
    assert spec.group_name == "lake" and spec.kinds == {"duckdb"}
    assert "P30D" in (spec.description or "")

    schedule = defs.resolve_schedule_def("lake_maintenance_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.job_name == "lake_maintenance"
    assert schedule.cron_schedule == "0 3 * * 0" and schedule.execution_timezone == "UTC"
    assert "USAGE_LAKE_RETENTION" in (schedule.description or "")


def test_a_table_crowded_with_small_files_warns() -> None:
    def result(small: int) -> dg.AssetCheckResult:
        table = TableFiles("usage_events", small, small * 1000, small, 0, 0, small * 10)
        return lake_health_result(LakeStats((table,), 2, None, 0, ()))

    assert result(SMALL_FILE_LIMIT).passed
    crowded = result(SMALL_FILE_LIMIT + 1)
    assert not crowded.passed and crowded.severity == dg.AssetCheckSeverity.WARN
    assert crowded.description == (
        "more than 1,000 data files under 1,048,576 bytes in usage_events (1,001): run lake_maintenance"
    )
    assert crowded.metadata["most_small_files_in_one_table"].value == SMALL_FILE_LIMIT + 1
