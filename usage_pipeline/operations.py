"""What the CLI does, as functions: one sensor evaluation plus its runs, and a period close."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from filelock import FileLock, Timeout

from usage_pipeline.exit_codes import EXIT_FAILED, EXIT_OK
from usage_pipeline.ingest.assets import HOST_TAG, INGEST_JOB_NAME, PID_TAG
from usage_pipeline.ingest.model import STATUS_FAILED
from usage_pipeline.ingest.sensors import SENSOR_NAME, evaluate_sensor, fail_dead_runs
from usage_pipeline.ingest.store import FileOutcome
from usage_pipeline.local_s3 import s3_client
from usage_pipeline.settings import Settings
from usage_pipeline.storage.connection import connect

CLI_CURSOR_KEY = "usage_pipeline/cli_sensor_cursor"
CLI_PENDING_KEY = "usage_pipeline/cli_pending_runs"
LAUNCHED_BY_TAG = "usage_pipeline/launched_by"
RUN_KEY_TAG = "dagster/run_key"
# The CLI prints its own one-line-per-file summary; the full event log still goes to the instance (UI).
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


class IngestBusyError(RuntimeError):
    """Another `usage-pipeline ingest` kept the lock for longer than the configured wait."""


@dataclass
class IngestResult:
    outcomes: list[FileOutcome] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    failed_runs: list[str] = field(default_factory=list)
    keys_listed: int = 0

    @property
    def exit_code(self) -> int:
        """SPEC 9: 0 when every processed file ended well (or nothing was new), 1 when any failed."""
        if self.failed_runs or any(o.status == STATUS_FAILED for o in self.outcomes):
            return EXIT_FAILED
        return EXIT_OK


def _run_exists(instance: dg.DagsterInstance, run_key: str) -> bool:
    runs = instance.get_runs(dg.RunsFilter(job_name=INGEST_JOB_NAME, tags={RUN_KEY_TAG: run_key}), limit=1)
    return bool(runs)


def _outcomes_of_runs(settings: Settings, run_ids: list[str]) -> list[FileOutcome]:
    if not run_ids:
        return []
    with connect(settings.duckdb_path, settings.duckdb_lock_timeout.total_seconds()) as conn:
        rows = conn.execute(
            """SELECT file_key, etag, size_bytes, status, layout, failed_reason, failed_detail,
                      rows_total, rows_accepted, rows_duplicate, rows_rejected
               FROM ingested_files WHERE run_id IN (SELECT unnest($runs))
               ORDER BY arrived_at, file_key""",
            {"runs": run_ids},
        ).fetchall()
    return [FileOutcome(*row) for row in rows]


def _encode_requests(requests: list[dg.RunRequest]) -> str:
    return json.dumps(
        [{"run_key": r.run_key, "run_config": r.run_config, "tags": dict(r.tags)} for r in requests]
    )


def _decode_requests(text: str | None) -> list[dg.RunRequest]:
    return [dg.RunRequest(**item) for item in json.loads(text or "[]")]


def _execute(
    instance: dg.DagsterInstance, job: dg.JobDefinition, request: dg.RunRequest, result: IngestResult
) -> None:
    """Run one requested batch in this process, unless a run with its run key already exists."""
    assert request.run_key is not None
    if _run_exists(instance, request.run_key):
        return
    tags = {
        **request.tags,
        RUN_KEY_TAG: request.run_key,
        LAUNCHED_BY_TAG: "cli",
        "dagster/sensor_name": SENSOR_NAME,
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
    }
    run = job.execute_in_process(
        run_config={**request.run_config, **QUIET_CONSOLE}, instance=instance, tags=tags, raise_on_error=False
    )
    result.run_ids.append(run.run_id)
    if not run.success:
        result.failed_runs.append(run.run_id)


def run_ingest(instance: dg.DagsterInstance, defs: dg.Definitions, settings: Settings) -> IngestResult:
    """One evaluation of the sensor's logic and the runs it requests, executed in this process.

    The CLI keeps its own listing cursor in the instance (the daemon's sensor keeps its own), and holds a
    lock for the whole evaluation so that two concurrent `ingest` commands take turns: the second one
    waits, then finds nothing new. Runs are recorded in the instance, so they show in the UI.
    """
    lock_path = Path(instance.root_directory) / "usage_pipeline_ingest.lock"
    lock = FileLock(str(lock_path), timeout=settings.duckdb_lock_timeout.total_seconds())
    try:
        lock.acquire()
    except Timeout as exc:
        raise IngestBusyError(
            f"another `usage-pipeline ingest` has held {lock_path} for over "
            f"{settings.duckdb_lock_timeout.total_seconds():.0f} s; giving up (USAGE_DUCKDB_LOCK_TIMEOUT)"
        ) from exc
    try:
        result = IngestResult()
        job = defs.resolve_job_def(INGEST_JOB_NAME)
        stored = instance.run_storage.get_cursor_values({CLI_CURSOR_KEY, CLI_PENDING_KEY})
        # Runs of a killed process first give back their pool slot; then the requests of an earlier
        # evaluation whose process died before running them all.
        fail_dead_runs(instance)
        for request in _decode_requests(stored.get(CLI_PENDING_KEY)):
            _execute(instance, job, request, result)
        outcome = evaluate_sensor(
            instance, s3_client(settings.s3_endpoint_url), settings, stored.get(CLI_CURSOR_KEY)
        )
        result.keys_listed = outcome.keys_listed
        # Like the daemon's tick, the new cursor and the requests it implies are saved together before any
        # run starts: a process killed now resumes the requests next time instead of forgetting them.
        instance.run_storage.set_cursor_values(
            {
                CLI_CURSOR_KEY: outcome.cursor.to_json(),
                CLI_PENDING_KEY: _encode_requests(outcome.run_requests),
            }
        )
        for request in outcome.run_requests:
            _execute(instance, job, request, result)
        instance.run_storage.set_cursor_values({CLI_PENDING_KEY: "[]"})
        result.outcomes = _outcomes_of_runs(settings, result.run_ids)
        return result
    finally:
        lock.release()
