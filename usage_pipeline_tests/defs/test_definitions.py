"""The whole Definitions load, on the embedded defaults, with what the UI must show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from usage_pipeline.definitions import build_definitions
from usage_pipeline.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_on_the_embedded_defaults():
    defs = build_definitions(load_settings({}))
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {
        "ingested_files",
        "usage_events",
        "rejected_events",
        "meters",
        "prices",
        "subscriptions",
        "meter_usage",
        "usage_exceptions",
        "invoice_line_items",
        "pending_invoices",
    } <= keys
    checks = {key.name for key in graph.asset_check_keys}
    assert {
        "no_failed_files",
        "no_rejected_rows",
        "row_counts_balance",
        "dedup_keys_unique",
        "late_usage",
    } <= checks
    assert defs.resolve_sensor_def("usage_files_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    schedule = defs.resolve_schedule_def("period_close_schedule")
    assert schedule.cron_schedule == "0 1 * * *"  # D+1 00:00 UTC + the default 1 h grace
    assert {defs.resolve_job_def(name).name for name in ("ingest_files", "period_close")} == {
        "ingest_files",
        "period_close",
    }


def test_grace_setting_moves_the_close_schedule():
    defs = build_definitions(load_settings({"USAGE_CLOSE_GRACE": "PT2H30M"}))
    assert defs.resolve_schedule_def("period_close_schedule").cron_schedule == "30 2 * * *"


def test_workspace_loads_with_the_dagster_cli_and_no_configuration_warnings():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("USAGE_", "DAGSTER_HOME"))}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Validation successful for code location usage_pipeline" in output
    suspicious = [
        line
        for line in output.splitlines()
        if ("warn" in line.lower() or "missing" in line.lower())
        and "SupersessionWarning" not in line
        and "return callback" not in line
    ]
    assert suspicious == []


def test_dg_checks_and_lists_the_project_definitions():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("USAGE_", "DAGSTER_HOME"))}
    dg_cli = str(Path(sys.executable).parent / "dg")
    checked = subprocess.run(
        [dg_cli, "check", "defs"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr)[-3000:]
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = subprocess.run(
        [dg_cli, "list", "defs", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "ingested_files" in listed.stdout and "usage_files_sensor" in listed.stdout


def test_the_cli_names_the_code_location_as_workspace_yaml_does():
    """CLI runs carry this location's origin; `usage-pipeline dev` outside a checkout writes the same."""
    from usage_pipeline.cli.main import workspace_yaml

    assert (ROOT / "workspace.yaml").read_text() == workspace_yaml()
