"""The S3 sensor: discover new file versions, request bounded ingest runs, and retry runs that died."""

import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from usage_pipeline.ingest.assets import HOST_TAG, INGEST_JOB_NAME, PID_TAG, FileVersionConfig
from usage_pipeline.ingest.discovery import DiscoveryLimits, ListingCursor, plan_tick
from usage_pipeline.ingest.model import FileVersion
from usage_pipeline.ingest.s3 import list_page
from usage_pipeline.resources import PipelineSettings
from usage_pipeline.settings import Settings

SENSOR_NAME = "usage_files_sensor"
ATTEMPT_TAG = "usage_pipeline/attempt"
RETRY_OF_TAG = "usage_pipeline/retry_of"
FILES_TAG = "usage_pipeline/files"
MAX_ATTEMPTS = 3
RETRY_LOOKBACK = timedelta(days=2)
IN_FLIGHT = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
GAVE_UP = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


@dataclass
class SensorOutcome:
    run_requests: list[dg.RunRequest]
    cursor: ListingCursor
    keys_listed: int
    retried_runs: list[str]
    dead_runs: list[str]


def discovery_limits(settings: Settings) -> DiscoveryLimits:
    return DiscoveryLimits(
        run_max_files=settings.run_max_files,
        run_max_bytes=settings.run_max_bytes,
        tick_max_runs=settings.tick_max_runs,
        tick_list_seconds=settings.tick_list_seconds,
        overlap=settings.listing_overlap,
        max_file_bytes=settings.max_file_bytes,
    )


def batch_run_request(batch: list[FileVersion]) -> dg.RunRequest:
    """A run for a batch; its run key names the exact file versions, so it is never requested twice."""
    digest = hashlib.sha256("\n".join(sorted(f.version_id for f in batch)).encode()).hexdigest()[:24]
    return dg.RunRequest(
        run_key=f"files:{digest}",
        run_config={
            "ops": {
                "ingest_usage_files": {
                    "config": {"files": [FileVersionConfig.from_version(f) for f in batch]}
                }
            }
        },
        tags={ATTEMPT_TAG: "1", FILES_TAG: str(len(batch))},
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed the in-flight ingest runs whose process on this host no longer exists.

    The default run launcher cannot check a run worker's health, so a killed ingest would otherwise stay
    STARTED for ever and its files would never be retried. A run's files are safe to retry: the ledger
    makes re-ingesting a committed file version a no-op.
    """
    host = socket.gethostname()
    dead = []
    for run in instance.get_runs(dg.RunsFilter(job_name=INGEST_JOB_NAME, statuses=IN_FLIGHT)):
        pid = run.tags.get(PID_TAG)
        if run.tags.get(HOST_TAG) == host and pid and pid.isdigit() and not _process_alive(int(pid)):
            instance.report_run_failed(run, message=f"ingest process {pid} on {host} is gone (killed?)")
            # Its claim on the "duckdb" pool died with it; without this every later run would queue forever.
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            dead.append(run.run_id)
    return dead


def retry_requests(instance: dg.DagsterInstance, now: datetime) -> list[dg.RunRequest]:
    """Request again, up to MAX_ATTEMPTS, the file batches of ingest runs that failed or were cancelled."""
    requests = []
    records = instance.get_run_records(
        dg.RunsFilter(job_name=INGEST_JOB_NAME, statuses=GAVE_UP, updated_after=now - RETRY_LOOKBACK),
        limit=500,
    )
    for record in records:
        run = record.dagster_run
        base_key = run.tags.get("dagster/run_key", "")
        attempt = int(run.tags.get(ATTEMPT_TAG, "1"))
        if not base_key.startswith("files:") or attempt >= MAX_ATTEMPTS:
            continue
        base_key = base_key.split(":retry", 1)[0]
        requests.append(
            dg.RunRequest(
                run_key=f"{base_key}:retry{attempt + 1}",
                run_config=run.run_config,
                tags={
                    ATTEMPT_TAG: str(attempt + 1),
                    RETRY_OF_TAG: run.run_id,
                    FILES_TAG: run.tags.get(FILES_TAG, ""),
                },
            )
        )
    return requests


def evaluate_sensor(
    instance: dg.DagsterInstance,
    client: Any,
    settings: Settings,
    cursor: str | None,
    now: datetime | None = None,
) -> SensorOutcome:
    """One evaluation: retries for dead or failed runs first, then newly discovered file versions."""
    now = now or datetime.now(UTC)
    dead = fail_dead_runs(instance)
    retries = retry_requests(instance, now)
    plan = plan_tick(
        lambda after: list_page(client, settings.bucket, settings.prefix, after),
        ListingCursor.from_json(cursor),
        discovery_limits(settings),
        now,
    )
    requests = retries + [batch_run_request(batch) for batch in plan.batches]
    return SensorOutcome(
        requests, plan.cursor, plan.keys_listed, [r.tags[RETRY_OF_TAG] for r in retries], dead
    )


@dg.sensor(
    name=SENSOR_NAME,
    job_name=INGEST_JOB_NAME,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Lists s3://$USAGE_BUCKET/$USAGE_PREFIX (sub-folders included) and requests one ingest run per "
        "batch of new file versions (at most USAGE_RUN_MAX_FILES files / USAGE_RUN_MAX_BYTES bytes per run); "
        "retries runs that failed or whose process died."
    ),
)
def usage_files_sensor(
    context: dg.SensorEvaluationContext, s3: S3Resource, settings: PipelineSettings
) -> dg.SensorResult:
    outcome = evaluate_sensor(context.instance, s3.get_client(), settings.get(), context.cursor)
    files = sum(int(r.tags.get(FILES_TAG) or 0) for r in outcome.run_requests)
    context.log.info(
        f"listed {outcome.keys_listed} keys; requesting {len(outcome.run_requests)} runs for {files} files"
        + (f"; retrying failed runs {outcome.retried_runs}" if outcome.retried_runs else "")
        + (f"; marked dead runs failed {outcome.dead_runs}" if outcome.dead_runs else "")
    )
    return dg.SensorResult(run_requests=outcome.run_requests, cursor=outcome.cursor.to_json())
