"""The S3 sensor: discover new file versions and request bounded ingest runs until the ledger has them."""

import dataclasses
import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from usage_pipeline.core.ingest.discovery import (
    DiscoveryLimits,
    ListingCursor,
    batch_files,
    plan_tick,
    version_digest,
)
from usage_pipeline.core.ingest.ledger import attempts_of, ledgered
from usage_pipeline.core.ingest.model import FileVersion
from usage_pipeline.core.ingest.pending import (
    add_pending,
    attempts_so_far,
    drop_done,
    pending_versions,
    select_due,
    store_pending,
)
from usage_pipeline.core.ingest.s3 import list_page
from usage_pipeline.core.storage.lake import Lake, LakeBusyError, read_only
from usage_pipeline.core.text import plural
from usage_pipeline.defs.ingest.assets import INGEST_JOB_NAME, FileVersionConfig
from usage_pipeline.defs.resources import HOST_TAG, PID_TAG, PipelineSettings, UsageLake
from usage_pipeline.settings import Settings, lake_of

SENSOR_NAME = "usage_files_sensor"
ATTEMPT_TAG = "usage_pipeline/attempt"
RETRY_OF_TAG = "usage_pipeline/retry_of"
FILES_TAG = "usage_pipeline/files"
RUN_KEY_TAG = "dagster/run_key"
# A sensor tick does not wait for a writer: it reads the ledger next tick instead.
LEDGER_READ_TIMEOUT_SECONDS = 5.0
# The runs whose files are still being worked on: their versions are not requested again meanwhile.
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# A run in one of these states whose process is gone holds its pool slots for ever unless freed.
MAYBE_RUNNING = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass
class SensorOutcome:
    run_requests: list[dg.RunRequest]
    cursor: ListingCursor
    keys_listed: int
    retried_runs: list[str]
    dead_runs: list[str]
    ledger_read: bool = True
    pending: int = 0  # versions waiting for a ledger row after this evaluation
    found_again: int = 0  # versions below the watermark that the ledger does not hold (re-proposed)


def discovery_limits(settings: Settings) -> DiscoveryLimits:
    return DiscoveryLimits(
        run_max_files=settings.run_max_files,
        run_max_bytes=settings.run_max_bytes,
        tick_max_runs=settings.tick_max_runs,
        tick_list_seconds=settings.tick_list_seconds,
        overlap=settings.listing_overlap,
        max_file_bytes=settings.max_file_bytes,
    )


def _batch_digest(batch: list[FileVersion]) -> str:
    return hashlib.sha256("\n".join(sorted(f.version_id for f in batch)).encode()).hexdigest()[:24]


def batch_run_request(
    batch: list[FileVersion], number: int, attempt: int = 1, retry_of: str | None = None
) -> dg.RunRequest:
    """A run for a batch. Its key names the exact versions and the request's number, so a key is never
    reused: a run that exists with a key (even one that never started) never blocks a later request."""
    tags = {ATTEMPT_TAG: str(attempt), FILES_TAG: str(len(batch))}
    if retry_of:
        tags[RETRY_OF_TAG] = retry_of
    return dg.RunRequest(
        run_key=f"files:{_batch_digest(batch)}:{number}",
        run_config={
            "ops": {
                "ingest_usage_files": {
                    "config": {"files": [FileVersionConfig.from_version(f) for f in batch]}
                }
            }
        },
        tags=tags,
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
    """Mark as failed the runs of any job whose process on this host no longer exists, and free their
    pool slots.

    The default run launcher cannot check a run worker's health, so a killed ingest or close would stay
    STARTED (or NOT_STARTED, when killed between creating and starting it) for ever, holding the only
    pool slot: every later step would wait on it. Runs carry their host and pid from the moment
    they are created by the CLI, or from their first step otherwise (the `lake` resource tags them).
    Retrying their files is safe: the ledger makes re-ingesting a committed version a no-op.
    """
    host = socket.gethostname()
    dead = []
    for run in instance.get_runs(dg.RunsFilter(statuses=MAYBE_RUNNING)):
        pid = run.tags.get(PID_TAG)
        if run.tags.get(HOST_TAG) == host and pid and pid.isdigit() and not _process_alive(int(pid)):
            instance.report_run_failed(
                run, message=f"the process of this run ({pid} on {host}) is gone (killed?)"
            )
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            dead.append(run.run_id)
    return dead


def in_flight_run_keys(instance: dg.DagsterInstance) -> set[str]:
    runs = instance.get_runs(dg.RunsFilter(job_name=INGEST_JOB_NAME, statuses=IN_FLIGHT))
    return {run.tags[RUN_KEY_TAG] for run in runs if RUN_KEY_TAG in run.tags}


def _max_pending(limits: DiscoveryLimits) -> int:
    """Back-pressure: no new listing while this many versions wait (keeps the cursor small)."""
    return 2 * limits.tick_max_runs * limits.run_max_files


def evaluate_sensor(
    instance: dg.DagsterInstance,
    client: Any,
    settings: Settings,
    cursor: str | None,
    now: datetime | None = None,
    ledger_timeout_seconds: float = LEDGER_READ_TIMEOUT_SECONDS,
    lake: Lake | None = None,
) -> SensorOutcome:
    """One evaluation: free dead runs, discover new versions, ask the ledger which pending versions are
    done, and request runs for the rest that are due."""
    now = now or datetime.now(UTC)
    dead = fail_dead_runs(instance)
    state = ListingCursor.from_json(cursor)
    pending = pending_versions(state)
    limits = discovery_limits(settings)
    keys_listed = 0
    older: list[FileVersion] = []
    if len(pending) < _max_pending(limits):
        plan = plan_tick(
            lambda after: list_page(client, settings.bucket, settings.prefix, after), state, limits, now
        )
        state, keys_listed, older = plan.cursor, plan.keys_listed, plan.older
        add_pending(pending, plan.candidates)
    ledger_read, found_again, attempts = False, 0, {}
    try:
        ledger = dataclasses.replace(lake or lake_of(settings), busy_timeout_seconds=ledger_timeout_seconds)
        with read_only(ledger) as conn:
            if conn is not None:
                drop_done(pending, ledgered(conn, [p.file for p in pending.values()]))
                done = ledgered(conn, older)
                found_again = add_pending(pending, [f for f in older if (f.key, f.etag) not in done])
                attempts = attempts_of(conn, [p.file for p in pending.values()])
            else:  # no store yet: nothing was ever ingested
                found_again = add_pending(pending, older)
            ledger_read = True
    except LakeBusyError:
        pass  # the catalog stays busy: new versions are requested, retries wait for the ledger
    due = select_due(
        pending,
        now=now,
        in_flight=in_flight_run_keys(instance),
        ledger_read=ledger_read,
        attempts=attempts,
        base=settings.retry_backoff,
        cap=settings.retry_backoff_max,
    )
    requests, retried = [], []
    for batch in batch_files([p.file for p in due], limits)[: limits.tick_max_runs]:
        entries = [pending[version_digest(f)] for f in batch]
        records = [attempts.get((f.key, f.etag)) for f in batch]
        attempt = max(attempts_so_far(p, r) for p, r in zip(entries, records, strict=True)) + 1
        retry_of = next((r.last_run_id for r in records if r is not None and r.last_run_id), None)
        state.requests += 1
        request = batch_run_request(batch, state.requests, attempt, retry_of)
        for p in entries:
            p.requested_at, p.run_key, p.requests = now.timestamp(), request.run_key, p.requests + 1
        requests.append(request)
        if retry_of:
            retried.append(retry_of)
    store_pending(state, pending)
    return SensorOutcome(requests, state, keys_listed, retried, dead, ledger_read, len(pending), found_again)


@dg.sensor(
    name=SENSOR_NAME,
    job_name=INGEST_JOB_NAME,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Lists s3://$USAGE_BUCKET/$USAGE_PREFIX (sub-folders included) and requests one ingest run per "
        "batch of new file versions (at most USAGE_RUN_MAX_FILES files / USAGE_RUN_MAX_BYTES bytes per run); "
        "requests a version again, with backoff, until the ledger has it; fails runs whose process died."
    ),
)
def usage_files_sensor(
    context: dg.SensorEvaluationContext, s3: S3Resource, lake: UsageLake, settings: PipelineSettings
) -> dg.SensorResult:
    outcome = evaluate_sensor(
        context.instance, s3.get_client(), settings.get(), context.cursor, lake=lake.lake()
    )
    files = sum(int(r.tags.get(FILES_TAG) or 0) for r in outcome.run_requests)
    context.log.info(
        f"listed {plural(outcome.keys_listed, 'key')}; requesting {plural(len(outcome.run_requests), 'run')} "
        f"for {plural(files, 'file')}; {plural(outcome.pending, 'version')} wait for a ledger row"
        + (f"; retrying the files of runs {outcome.retried_runs}" if outcome.retried_runs else "")
        + (f"; marked dead runs failed {outcome.dead_runs}" if outcome.dead_runs else "")
        + (f"; {outcome.found_again} older versions missing from the ledger" if outcome.found_again else "")
        + ("" if outcome.ledger_read else "; the store was busy, so retries wait for the next tick")
    )
    return dg.SensorResult(run_requests=outcome.run_requests, cursor=outcome.cursor.to_json())
