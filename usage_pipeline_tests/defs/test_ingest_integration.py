"""End to end over the real parts: moto's S3 server, a DuckDB file and a Dagster instance."""

from __future__ import annotations

import gzip
import json
import time

import dagster as dg
import pytest

from usage_pipeline.cli.ingest import run_ingest
from usage_pipeline.core.storage.lake import read_only
from usage_pipeline.definitions import build_definitions, build_resources
from usage_pipeline.defs.ingest.assets import INGEST_JOB_NAME
from usage_pipeline.defs.ingest.sensors import usage_files_sensor
from usage_pipeline.settings import Settings, lake_of
from usage_pipeline_tests.conftest import now_s, put


def stripe_csv(rows: list[tuple[str, int, str, str, str]]) -> str:
    lines = ["identifier,timestamp,event_name,payload_stripe_customer_id,payload_value"]
    lines += [",".join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def ledger(settings: Settings) -> dict[str, tuple]:
    with read_only(lake_of(settings)) as conn:
        rows = conn.execute(
            """SELECT file_key, status, failed_reason, rows_total, rows_accepted, rows_duplicate,
                      rows_rejected FROM ingested_files ORDER BY file_key"""
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def scalar(settings: Settings, query: str):
    with read_only(lake_of(settings)) as conn:
        return conn.execute(query).fetchall()[0][0]


def evaluate_and_run(instance: dg.DagsterInstance, settings: Settings, cursor: str | None = None):
    """The sensor definition itself, evaluated against the instance, and its runs executed."""
    defs = build_definitions(settings)
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=build_resources(settings), definitions=defs
    )
    result = usage_files_sensor(context)
    job = defs.resolve_job_def(INGEST_JOB_NAME)
    runs = []
    for request in result.run_requests or []:
        tags = {**request.tags, "dagster/run_key": request.run_key}
        runs.append(job.execute_in_process(run_config=request.run_config, instance=instance, tags=tags))
    return result, runs


def test_sensor_to_tables_with_every_kind_of_file(instance, settings, s3, bucket):
    t = now_s() - 3600
    put(
        s3,
        bucket,
        "incoming/a.csv",
        stripe_csv(
            [
                ("e1", t, "api_call", "cus_1", "1"),
                ("e2", t, "api_call", "cus_1", "2"),
                ("e1", t, "api_call", "cus_1", "1"),  # in-file duplicate
                ("e3", t * 1000, "api_call", "cus_1", "1"),  # milliseconds: invalid_timestamp
                ("e4", t, "api_call", "", "1"),  # missing_required_field
            ]
        ),
    )
    put(
        s3,
        bucket,
        "incoming/sub/b.jsonl.gz",
        gzip.compress(
            "\n".join(
                json.dumps(r)
                for r in [
                    {
                        "subscription_id": "sub_1",
                        "usage_timestamp": t * 1000,
                        "deduplication_id": "d1",
                        "properties": {"feature": "storage", "gb": 3},
                    },
                    {
                        "subscription_id": "sub_1",
                        "usage_timestamp": t * 1000,
                        "deduplication_id": "d2",
                        "properties": {"feature": "storage", "gb": 4},
                    },
                ]
            ).encode()
        ),
    )
    put(s3, bucket, "incoming/corrupt.csv.gz", b"this is not gzip")
    put(s3, bucket, "incoming/notes.txt", "hello")
    put(s3, bucket, "incoming/empty.csv", "")
    put(s3, bucket, "elsewhere/ignored.csv", stripe_csv([("x", t, "api_call", "cus_9", "1")]))

    result, runs = evaluate_and_run(instance, settings)
    assert len(runs) == 1 and runs[0].success
    files = ledger(settings)
    assert set(files) == {
        "incoming/a.csv",
        "incoming/sub/b.jsonl.gz",
        "incoming/corrupt.csv.gz",
        "incoming/notes.txt",
        "incoming/empty.csv",
    }
    assert files["incoming/a.csv"] == ("succeeded_with_errors", None, 5, 2, 1, 2)
    assert files["incoming/sub/b.jsonl.gz"] == ("succeeded", None, 2, 2, 0, 0)
    assert files["incoming/corrupt.csv.gz"][:2] == ("failed", "unreadable_file")
    assert files["incoming/notes.txt"][:2] == ("failed", "unsupported_file")
    assert files["incoming/empty.csv"][0] == "skipped_empty"
    assert scalar(settings, "SELECT count(*) FROM usage_events") == 4
    codes = scalar(settings, "SELECT list(error_code ORDER BY source_row) FROM rejected_events")
    assert codes == ["invalid_timestamp", "missing_required_field"]

    checks = {e.check_name: e for e in runs[0].get_asset_check_evaluations()}
    assert checks["no_failed_files"].passed is False
    assert checks["no_failed_files"].severity == dg.AssetCheckSeverity.ERROR
    assert checks["no_rejected_rows"].passed is False
    assert checks["no_rejected_rows"].severity == dg.AssetCheckSeverity.WARN
    assert checks["row_counts_balance"].passed is True
    assert checks["dedup_keys_unique"].passed is True
    failed_table = checks["no_failed_files"].metadata["failing files (oldest first)"]
    reasons = {record.data["file"]: record.data["reason"] for record in failed_table.records}
    assert reasons["incoming/corrupt.csv.gz"] == "unreadable_file"
    assert reasons["incoming/notes.txt"] == "unsupported_file"

    # A second evaluation with the new cursor requests nothing: nothing is ingested twice.
    _, runs2 = evaluate_and_run(instance, settings, cursor=result.cursor)
    assert runs2 == []


def test_cross_file_duplicates_and_reuploaded_key(instance, settings, s3, bucket):
    t = now_s() - 600
    put(s3, bucket, "incoming/1.csv", stripe_csv([("e1", t, "api_call", "cus_1", "1")]))
    result, _ = evaluate_and_run(instance, settings)
    put(
        s3,
        bucket,
        "incoming/2.csv",
        stripe_csv([("e1", t, "api_call", "cus_1", "1"), ("e2", t, "api_call", "cus_1", "5")]),
    )
    # Same key, new content: a new version; its e1 dedupes against history, e3 is new.
    put(
        s3,
        bucket,
        "incoming/1.csv",
        stripe_csv([("e1", t, "api_call", "cus_1", "1"), ("e3", t, "api_call", "cus_1", "1")]),
    )
    result, runs = evaluate_and_run(instance, settings, cursor=result.cursor)
    assert all(r.success for r in runs)
    with read_only(lake_of(settings)) as conn:
        versions = conn.execute(
            "SELECT file_key, rows_accepted, rows_duplicate FROM ingested_files ORDER BY arrived_at, file_key"
        ).fetchall()
        ids = [r[0] for r in conn.execute("SELECT event_id FROM usage_events ORDER BY event_id").fetchall()]
    assert sorted(versions) == sorted(
        [("incoming/1.csv", 1, 0), ("incoming/2.csv", 1, 1), ("incoming/1.csv", 1, 1)]
    )
    assert ids == ["e1", "e2", "e3"]


def test_same_second_uploads_are_all_ingested_once(instance, settings, s3, bucket):
    t = now_s() - 60
    put(s3, bucket, "incoming/a.csv", stripe_csv([("a", t, "api_call", "cus_1", "1")]))
    result, _ = evaluate_and_run(instance, settings)
    # Uploaded right after the tick, very likely within the same LastModified second.
    put(s3, bucket, "incoming/b.csv", stripe_csv([("b", t, "api_call", "cus_1", "1")]))
    put(s3, bucket, "incoming/0.csv", stripe_csv([("c", t, "api_call", "cus_1", "1")]))
    result, _ = evaluate_and_run(instance, settings, cursor=result.cursor)
    result, runs = evaluate_and_run(instance, settings, cursor=result.cursor)
    assert runs == []
    assert sorted(ledger(settings)) == ["incoming/0.csv", "incoming/a.csv", "incoming/b.csv"]
    assert scalar(settings, "SELECT count(*) FROM usage_events") == 3


def test_more_than_1000_keys_through_the_cli_operation(instance, settings, s3, bucket):
    t = now_s() - 60
    for i in range(1100):
        put(s3, bucket, f"incoming/k{i:05d}.csv", stripe_csv([(f"e{i}", t, "api_call", "cus_1", "1")]))
    settings = settings.model_copy(update={"run_max_files": 400, "tick_max_runs": 2})
    defs = build_definitions(settings)
    first = run_ingest(instance, defs, settings)  # bounded: 2 runs x 400 files this time
    assert len(first.run_ids) == 2 and len(first.outcomes) == 800
    second = run_ingest(instance, defs, settings)  # the rest of the backlog
    third = run_ingest(instance, defs, settings)  # nothing new
    assert len(second.outcomes) == 300 and third.outcomes == [] and third.exit_code == 0
    assert len(ledger(settings)) == 1100
    assert scalar(settings, "SELECT count(DISTINCT event_id) FROM usage_events") == 1100
    assert scalar(settings, "SELECT count(*) FROM usage_events") == 1100


def test_exit_code_is_1_when_a_file_failed(instance, settings, s3, bucket):
    put(s3, bucket, "incoming/bad.json", b"\x00\x01 not json")
    result = run_ingest(instance, build_definitions(settings), settings)
    assert [o.status for o in result.outcomes] == ["failed"]
    assert result.exit_code == 1


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.FAILURE])
def test_a_failed_run_is_retried_and_its_files_ingested(instance, settings, s3, bucket, status):
    t = now_s() - 60
    put(s3, bucket, "incoming/a.csv", stripe_csv([("a", t, "api_call", "cus_1", "1")]))
    defs = build_definitions(settings)
    broken = settings.model_copy(update={"bucket": f"{bucket}-missing"})
    # The run requested for the file fails (its bucket is unreachable), like an S3 outage would.
    context = dg.build_sensor_context(
        instance=instance, resources=build_resources(settings), definitions=defs
    )
    request = usage_files_sensor(context).run_requests[0]
    failed = (
        build_definitions(broken)
        .resolve_job_def(INGEST_JOB_NAME)
        .execute_in_process(
            run_config=request.run_config,
            instance=instance,
            tags={**request.tags, "dagster/run_key": request.run_key},
            raise_on_error=False,
        )
    )
    assert not failed.success
    time.sleep(0.01)
    result = run_ingest(instance, defs, settings)  # retries the failed run's batch
    assert [o.key for o in result.outcomes] == ["incoming/a.csv"]
    retry = instance.get_run_by_id(result.run_ids[0])
    assert retry.tags["usage_pipeline/retry_of"] == failed.run_id
    assert retry.tags["usage_pipeline/attempt"] == "2"


def test_a_tick_that_fails_half_way_through_the_listing_is_redone_without_loss(
    instance, settings, s3, bucket
):
    from usage_pipeline.cli.local_s3 import s3_client
    from usage_pipeline.core.ingest.discovery import ListingCursor
    from usage_pipeline.defs.ingest.sensors import evaluate_sensor

    t = now_s() - 60
    for i in range(1001):  # two listing pages
        put(s3, bucket, f"incoming/k{i:05d}.csv", stripe_csv([(f"e{i}", t, "api_call", "cus_1", "1")]))
    settings = settings.model_copy(update={"run_max_files": 500, "tick_max_runs": 10})
    flaky = s3_client(settings.s3_endpoint_url)
    calls = {"n": 0}

    def fail_second_page(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("S3 went away between two listing pages")

    flaky.meta.events.register("before-call.s3.ListObjectsV2", fail_second_page)
    with pytest.raises(ConnectionError):
        evaluate_sensor(instance, flaky, settings, cursor=None)
    # The failed tick produced no cursor and no run request: the next tick starts from the same cursor.
    outcome = evaluate_sensor(instance, flaky, settings, cursor=None)
    requested = [
        f["key"]
        for r in outcome.run_requests
        for f in r.run_config["ops"]["ingest_usage_files"]["config"]["files"]
    ]
    assert len(requested) == 1001 and len(set(requested)) == 1001
    # The daemon creates the requested runs; while they are queued nothing is requested twice.
    job = build_definitions(settings).resolve_job_def(INGEST_JOB_NAME)
    for request in outcome.run_requests:
        instance.create_run_for_job(
            job_def=job, run_config=request.run_config, tags={"dagster/run_key": request.run_key}
        )
    again = evaluate_sensor(instance, flaky, settings, cursor=outcome.cursor.to_json())
    assert again.run_requests == [] and isinstance(again.cursor, ListingCursor)
    assert again.pending == 1001
