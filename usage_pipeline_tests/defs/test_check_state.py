"""The UI tells the truth: the state checks judge the ledger, not the last run, and a run that skipped
files says so in its tags and its materialization."""

from __future__ import annotations

import gzip
import subprocess
import sys

import dagster as dg
import pytest
from click.testing import CliRunner

from usage_pipeline.cli.ingest import acknowledge_file
from usage_pipeline.cli.main import main
from usage_pipeline.core.ingest.runner import FileCounts, describe_run
from usage_pipeline.definitions import build_definitions
from usage_pipeline.defs.ingest.assets import INGEST_JOB_NAME
from usage_pipeline.settings import Settings
from usage_pipeline_tests.cli.test_cli_processes import cli_env
from usage_pipeline_tests.conftest import now_s, put
from usage_pipeline_tests.defs.test_ingest_integration import evaluate_and_run, stripe_csv

BAD = "incoming/bad.csv.gz"
FILE_TAGS = (
    "files_total",
    "files_failed",
    "files_succeeded",
    "files_with_errors",
    "files_empty",
    "files_unavailable",
    "rows_rejected",
)


def run_empty(instance: dg.DagsterInstance, settings: Settings) -> dg.ExecuteInProcessResult:
    """What pressing "Materialize" on the ingest assets does: a run with no file versions."""
    job = build_definitions(settings).resolve_job_def(INGEST_JOB_NAME)
    return job.execute_in_process(
        run_config={"ops": {"ingest_usage_files": {"config": {"files": []}}}}, instance=instance
    )


def checks(run: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    assert run.success
    return {e.check_name: e for e in run.get_asset_check_evaluations()}


def table_rows(evaluation: dg.AssetCheckEvaluation, name: str) -> list[dict]:
    return [record.data for record in evaluation.metadata[name].records]


def ingested_files_metadata(run: dg.ExecuteInProcessResult) -> dict[str, dg.MetadataValue]:
    materialized = run.asset_materializations_for_node("ingest_usage_files")
    return next(m.metadata for m in materialized if m.asset_key == dg.AssetKey("ingested_files"))


def one_run(instance, settings, cursor=None):
    result, runs = evaluate_and_run(instance, settings, cursor)
    assert len(runs) == 1
    return result.cursor, runs[0]


def test_a_failed_file_stays_red_across_a_clean_run_and_an_empty_run_until_fixed(
    instance, settings, s3, bucket
):
    t = now_s() - 600
    put(s3, bucket, "incoming/a.csv", stripe_csv([("a", t, "api_call", "cus_1", "1")]))
    put(s3, bucket, BAD, b"this is not gzip")
    cursor, run = one_run(instance, settings)
    assert checks(run)["no_failed_files"].passed is False

    # A later batch of clean files does not make the failed one go away.
    put(s3, bucket, "incoming/b.csv", stripe_csv([("b", t, "api_call", "cus_1", "1")]))
    cursor, run = one_run(instance, settings, cursor)
    clean_run = checks(run)
    failed = clean_run["no_failed_files"]
    assert failed.passed is False and failed.severity == dg.AssetCheckSeverity.ERROR
    (row,) = table_rows(failed, "failing files (oldest first)")
    assert row["file"] == BAD and row["reason"] == "unreadable_file" and row["detail"]
    assert row["failing_since_utc"] and row["failing_for"] and row["failed_versions"] == 1
    assert failed.metadata["failing_keys"].value == 1
    assert failed.metadata["unreadable_file"].value == 1
    assert f"oldest, {BAD}" in failed.description
    assert clean_run["no_rejected_rows"].passed is True
    # Its own run is judged in its own metadata, not by the state check.
    files = ingested_files_metadata(run)["files_of_this_run"]
    assert [(r.data["file"], r.data["status"]) for r in files.records] == [("incoming/b.csv", "succeeded")]

    # Nor does pressing "Materialize" (an empty run): the state checks are evaluated all the same.
    empty = run_empty(instance, settings)
    assert checks(empty)["no_failed_files"].passed is False
    assert ingested_files_metadata(empty)["summary"].value == "no files in this run"
    assert checks(empty)["row_counts_balance"].passed is True

    # A fixed re-upload of the same key is a newer version that succeeds: green.
    put(
        s3,
        bucket,
        BAD,
        gzip.compress(stripe_csv([("fixed", t, "api_call", "cus_1", "1")]).encode()),
    )
    cursor, run = one_run(instance, settings, cursor)
    fixed = checks(run)["no_failed_files"]
    assert fixed.passed is True and fixed.metadata["failing_keys"].value == 0
    assert checks(run_empty(instance, settings))["no_failed_files"].passed is True


def test_an_acknowledged_failure_is_green_until_a_newer_version_fails(
    instance, settings, s3, bucket, tmp_path
):
    put(s3, bucket, BAD, b"this is not gzip")
    cursor, run = one_run(instance, settings)
    assert checks(run)["no_failed_files"].passed is False

    ack = acknowledge_file(settings, BAD, "the vendor resends it next month", by="tester")
    assert ack is not None
    assert (ack.file_key, ack.status, ack.failed_reason) == (BAD, "failed", "unreadable_file")
    assert ack.acknowledged_by == "tester" and ack.reason == "the vendor resends it next month"
    assert acknowledge_file(settings, "incoming/never-seen.csv", "r") is None
    acknowledged = checks(run_empty(instance, settings))["no_failed_files"]
    assert acknowledged.passed is True
    assert acknowledged.metadata["acknowledged_failing_keys"].value == 1
    assert "acknowledged and not counted: 1" in acknowledged.description

    # The acknowledgement covers that version only: a newer failed version of the key is red again.
    put(s3, bucket, BAD, b"still not gzip, but other bytes")
    cursor, run = one_run(instance, settings, cursor)
    again = checks(run)["no_failed_files"]
    assert again.passed is False
    (row,) = table_rows(again, "failing files (oldest first)")
    assert row["file"] == BAD and row["failed_versions"] == 2

    # `files --failed` lists it as failing, and the real command acknowledges it.
    env = cli_env(settings, tmp_path / "cli_home")
    listed = CliRunner().invoke(main, ["files", "--failed"], env=env)
    assert listed.exit_code == 1 and f"failed: 1 key whose newest version failed\n  {BAD}" in listed.output
    done = subprocess.run(
        [sys.executable, "-m", "usage_pipeline.cli", "files", "--ack", BAD, "--reason", "r"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"acknowledged {BAD} (etag ") and "failed: unreadable_file) by " in line
    assert line.endswith(" UTC: r")
    assert checks(run_empty(instance, settings))["no_failed_files"].passed is True
    listed = CliRunner().invoke(main, ["files", "--failed"], env=env)
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith("failed: 0 keys whose newest version failed\n")
    assert f"acknowledged: 1 failed key an operator will not fix (not counted by the checks)\n  {BAD}" in (
        listed.output
    )


def test_files_ack_refuses_in_one_line(instance, settings, s3, bucket, tmp_path):
    put(s3, bucket, BAD, b"this is not gzip")
    one_run(instance, settings)
    env = cli_env(settings, tmp_path / "cli_home")
    for args, message in [
        (["--ack", "incoming/never-seen.csv", "--reason", "r"], "the ledger has no version of"),
        (["--ack", BAD], "--reason"),
        (["--ack", BAD, "--reason", "  "], "--reason"),
        (["--reason", "r"], "--reason goes with --ack KEY"),
        (["--ack", BAD, "--reason", "r", "--failed"], "acknowledge alone"),
    ]:
        result = CliRunner().invoke(main, ["files", *args], env=env)
        assert result.exit_code == 2, args
        assert message in result.stderr and len(result.stderr.splitlines()) == 1, args
        assert result.stdout == "", args
    assert checks(run_empty(instance, settings))["no_failed_files"].passed is False


def test_rejected_rows_are_judged_on_the_newest_versions_until_fixed_or_acknowledged(
    instance, settings, s3, bucket
):
    t = now_s() - 600
    # Version 1 of a.csv: one row in milliseconds.
    put(
        s3,
        bucket,
        "incoming/a.csv",
        stripe_csv([("a1", t, "api_call", "cus_1", "1"), ("a2", t * 1000, "api_call", "cus_1", "1")]),
    )
    cursor, run = one_run(instance, settings)
    assert checks(run)["no_rejected_rows"].passed is False
    # Version 2 of a.csv replaces it with another problem; b.csv is clean.
    put(
        s3,
        bucket,
        "incoming/a.csv",
        stripe_csv([("a1", t, "api_call", "cus_1", "1"), ("a3", t, "api_call", "", "1")]),
    )
    put(s3, bucket, "incoming/b.csv", stripe_csv([("b", t, "api_call", "cus_1", "1")]))
    cursor, run = one_run(instance, settings, cursor)
    put(s3, bucket, "incoming/c.csv", stripe_csv([("c", t, "api_call", "cus_1", "1")]))
    cursor, run = one_run(instance, settings, cursor)  # a clean run
    for evaluated in (checks(run), checks(run_empty(instance, settings))):
        rejected = evaluated["no_rejected_rows"]
        assert rejected.passed is False and rejected.severity == dg.AssetCheckSeverity.WARN
        (version,) = table_rows(rejected, "files with rejected rows (oldest first)")
        assert version["file"] == "incoming/a.csv" and version["rejected"] == 1
        # Only the newest version's rejects: version 1's invalid_timestamp is history.
        samples = table_rows(rejected, "sample of rejected rows")
        assert [(s["source_file"], s["error_code"]) for s in samples] == [
            ("incoming/a.csv", "missing_required_field")
        ]
        assert samples[0]["error_message"] and "a3" in samples[0]["raw_record"]
        assert rejected.metadata["missing_required_field"].value == 1
        assert "invalid_timestamp" not in rejected.metadata
        assert rejected.metadata["files_with_rejects"].value == 1
        assert rejected.metadata["rows_rejected"].value == 1

    # Acknowledged, it stops counting; a fixed version 3 would have done the same.
    assert acknowledge_file(settings, "incoming/a.csv", "customer dropped the field", by="tester")
    acknowledged = checks(run_empty(instance, settings))["no_rejected_rows"]
    assert acknowledged.passed is True
    assert acknowledged.metadata["acknowledged_files_with_rejects"].value == 1
    put(s3, bucket, "incoming/a.csv", stripe_csv([("a3", t, "api_call", "cus_1", "1")]))
    cursor, run = one_run(instance, settings, cursor)
    fixed = checks(run)["no_rejected_rows"]
    assert fixed.passed is True and fixed.metadata["acknowledged_files_with_rejects"].value == 0


def test_a_run_is_tagged_with_its_file_outcomes_and_describes_them(instance, settings, s3, bucket):
    t = now_s() - 600
    put(s3, bucket, "incoming/ok.csv", stripe_csv([("o", t, "api_call", "cus_1", "1")]))
    put(
        s3,
        bucket,
        "incoming/some-bad-rows.csv",
        stripe_csv([("s1", t, "api_call", "cus_1", "1"), ("s2", t * 1000, "api_call", "", "1")]),
    )
    put(s3, bucket, "incoming/empty.csv", "")
    put(s3, bucket, BAD, b"this is not gzip")
    cursor, skipped = one_run(instance, settings)
    put(s3, bucket, "incoming/later.csv", stripe_csv([("l", t, "api_call", "cus_1", "1")]))
    cursor, clean = one_run(instance, settings, cursor)
    empty = run_empty(instance, settings)

    def tags(run) -> dict[str, str]:
        stored = instance.get_run_by_id(run.run_id).tags
        return {name: stored[f"usage_pipeline/{name}"] for name in FILE_TAGS}

    assert tags(skipped) == {
        "files_total": "4",
        "files_failed": "1",
        "files_succeeded": "1",
        "files_with_errors": "1",
        "files_empty": "1",
        "files_unavailable": "0",
        "rows_rejected": "1",
    }
    assert tags(clean)["files_total"] == "1" and tags(clean)["files_failed"] == "0"
    assert tags(empty)["files_total"] == "0"
    found = instance.get_runs(dg.RunsFilter(tags={"usage_pipeline/files_failed": "1"}))
    assert [r.run_id for r in found] == [skipped.run_id]
    with_errors = instance.get_runs(dg.RunsFilter(tags={"usage_pipeline/files_with_errors": "0"}))
    assert {r.run_id for r in with_errors} == {clean.run_id, empty.run_id}

    metadata = ingested_files_metadata(skipped)
    assert metadata["summary"].value == "1 of 4 files failed; 3 files ingested, 1 with rejected rows, 1 empty"
    assert metadata["files_failed"].value == 1 and metadata["rows_rejected"].value == 1
    statuses = {r.data["file"]: r.data["status"] for r in metadata["files_of_this_run"].records}
    assert statuses == {
        "incoming/ok.csv": "succeeded",
        "incoming/some-bad-rows.csv": "succeeded_with_errors",
        "incoming/empty.csv": "skipped_empty",
        BAD: "failed",
    }
    assert ingested_files_metadata(clean)["summary"].value == "1 file ingested"


@pytest.mark.parametrize(
    ("counts", "sentence"),
    [
        (dict(total=3, failed=2, succeeded=1), "2 of 3 files failed; 1 file ingested"),
        (dict(total=3, succeeded=2, with_errors=1), "3 files ingested, 1 with rejected rows"),
        (dict(total=1, failed=1), "1 of 1 file failed"),
        (
            dict(total=2, unavailable=1, succeeded=1),
            "1 of 2 files could not be read and will be retried; 1 file ingested",
        ),
        (dict(total=2, already_ingested=2), "2 files already ingested by an earlier run"),
        (dict(total=0), "no files in this run"),
    ],
)
def test_describe_run_counts_files_in_words(counts, sentence):
    fields = dict.fromkeys(
        ("failed", "succeeded", "with_errors", "empty", "unavailable", "already_ingested", "rows_rejected"), 0
    )
    assert describe_run(FileCounts(**{**fields, **counts})) == sentence
