"""What the CLI does, as functions: one sensor evaluation plus its runs, and a period close."""

from __future__ import annotations

import dataclasses
import getpass
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from filelock import FileLock, Timeout

from usage_pipeline.cli.exit_codes import EXIT_FAILED, EXIT_OK
from usage_pipeline.cli.launch import launch_in_process
from usage_pipeline.core.ingest import sql
from usage_pipeline.core.ingest.discovery import ListingCursor
from usage_pipeline.core.ingest.ledger import (
    Acknowledgement,
    acknowledge,
    attempts_of,
    failing_keys,
    ledgered,
    waiting_files,
)
from usage_pipeline.core.ingest.model import STATUS_FAILED, FileVersion
from usage_pipeline.core.ingest.pending import PendingVersion, pending_versions
from usage_pipeline.core.ingest.s3 import s3_client
from usage_pipeline.core.ingest.store import FileOutcome
from usage_pipeline.core.storage.lake import LakeBusyError, connect, read_only
from usage_pipeline.defs.ingest.assets import INGEST_JOB_NAME, FileVersionConfig
from usage_pipeline.defs.ingest.sensors import RUN_KEY_TAG, SENSOR_NAME, evaluate_sensor
from usage_pipeline.settings import Settings, lake_of

CLI_CURSOR_KEY = "usage_pipeline/cli_sensor_cursor"


class IngestBusyError(RuntimeError):
    """Another `usage-pipeline ingest` kept the lock for longer than the configured wait."""


@dataclass(frozen=True)
class Waiting:
    """A version this ingest requested that still has no ledger row: it is requested again later."""

    key: str
    attempts: int
    error: str


@dataclass
class IngestResult:
    outcomes: list[FileOutcome] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    failed_runs: list[str] = field(default_factory=list)
    keys_listed: int = 0
    # Versions still without a ledger row that this evaluation did not request (backoff, busy store).
    deferred: int = 0
    store_busy: bool = False

    @property
    def exit_code(self) -> int:
        """SPEC 9: 0 when every processed file ended well (or nothing was new), 1 when any failed or is
        still waiting for a retry."""
        if (
            self.failed_runs
            or self.waiting
            or (self.store_busy and self.deferred)
            or any(o.status == STATUS_FAILED for o in self.outcomes)
        ):
            return EXIT_FAILED
        return EXIT_OK


def _files_of(request: dg.RunRequest) -> list[FileVersion]:
    files = request.run_config["ops"]["ingest_usage_files"]["config"]["files"]
    return [FileVersionConfig(**f).to_version() for f in files]


def _execute(
    instance: dg.DagsterInstance, job: dg.JobDefinition, request: dg.RunRequest, result: IngestResult
) -> None:
    """Run one requested batch in this process, recorded like a run the sensor launched (see launch.py)."""
    assert request.run_key is not None
    tags = {**request.tags, RUN_KEY_TAG: request.run_key, "dagster/sensor_name": SENSOR_NAME}
    run = launch_in_process(instance, job, tags=tags, run_config=request.run_config)
    result.run_ids.append(run.run_id)
    if not run.success:
        result.failed_runs.append(run.run_id)


def _collect(
    settings: Settings, run_ids: list[str], requested: list[FileVersion], result: IngestResult
) -> None:
    """What the ledger says of this evaluation's runs, and which requested versions still wait."""
    if not requested:
        return
    # After a failed run the store may be what failed: look, but do not wait for it all over again.
    lake = lake_of(settings)
    if result.failed_runs:
        lake = dataclasses.replace(lake, busy_timeout_seconds=min(lake.busy_timeout_seconds, 5.0))
    try:
        with read_only(lake) as conn:
            if conn is None:
                raise LakeBusyError(f"the lake {lake.describe()} was never created")
            rows = conn.execute(sql.OUTCOMES_OF_RUNS, {"runs": run_ids}).fetchall()
            result.outcomes = [FileOutcome(*row) for row in rows]
            done = ledgered(conn, requested)
            attempts = attempts_of(conn, requested)
    except LakeBusyError as exc:
        result.store_busy = True
        result.waiting = [Waiting(f.key, 0, str(exc)) for f in requested]
        return
    for file in requested:
        if (file.key, file.etag) in done:
            continue
        record = attempts.get((file.key, file.etag))
        result.waiting.append(
            Waiting(
                file.key,
                record.attempts if record else 0,
                (record.last_error if record else None) or "its run did not finish; see the run's log",
            )
        )


def run_ingest(instance: dg.DagsterInstance, defs: dg.Definitions, settings: Settings) -> IngestResult:
    """One evaluation of the sensor's logic and the runs it requests, executed in this process.

    The CLI keeps its own listing cursor in the instance (the daemon's sensor keeps its own), and holds a
    lock for the whole evaluation so that two concurrent `ingest` commands take turns: the second one
    waits, then finds nothing new. Runs are recorded in the instance, so they show in the UI. The cursor
    (with the versions still pending and the requests just made) is saved before any run starts; what a
    killed process left undone is found again next time because the ledger does not have it.
    """
    lock_path = Path(instance.root_directory) / "usage_pipeline_ingest.lock"
    lock = FileLock(str(lock_path), timeout=settings.lake_busy_timeout.total_seconds())
    try:
        lock.acquire()
    except Timeout as exc:
        raise IngestBusyError(
            f"another `usage-pipeline ingest` has held {lock_path} for over "
            f"{settings.lake_busy_timeout.total_seconds():.0f} s; giving up (USAGE_LAKE_BUSY_TIMEOUT)"
        ) from exc
    try:
        result = IngestResult()
        job = defs.resolve_job_def(INGEST_JOB_NAME)
        stored = instance.run_storage.get_cursor_values({CLI_CURSOR_KEY})
        outcome = evaluate_sensor(
            instance,
            s3_client(settings.s3_endpoint_url, settings.s3_max_attempts),
            settings,
            stored.get(CLI_CURSOR_KEY),
        )
        result.keys_listed = outcome.keys_listed
        result.store_busy = not outcome.ledger_read
        instance.run_storage.set_cursor_values({CLI_CURSOR_KEY: outcome.cursor.to_json()})
        requested: list[FileVersion] = []
        for request in outcome.run_requests:
            requested += _files_of(request)
            _execute(instance, job, request, result)
        _collect(settings, result.run_ids, requested, result)
        asked = {(f.key, f.etag) for f in requested}
        result.deferred = sum(
            (p.file.key, p.file.etag) not in asked for p in pending_versions(outcome.cursor).values()
        )
        return result
    finally:
        lock.release()


@dataclass
class FilesReport:
    """`usage-pipeline files`: what is not done, from the ledger and from this CLI's pending requests."""

    failed: list[dict[str, object]] = field(default_factory=list)
    acknowledged: list[dict[str, object]] = field(default_factory=list)  # failing, but not to be fixed
    waiting: list[dict[str, object]] = field(default_factory=list)
    pending_requests: list[PendingVersion] = field(default_factory=list)


def list_files(instance: dg.DagsterInstance, settings: Settings) -> FilesReport:
    """Failed keys (newest version failed; those an operator acknowledged apart), versions waiting after an
    attempt (file_attempts), and versions the CLI requested that no run has taken up yet."""
    report = FilesReport()
    cursor = ListingCursor.from_json(
        instance.run_storage.get_cursor_values({CLI_CURSOR_KEY}).get(CLI_CURSOR_KEY)
    )
    pending = list(pending_versions(cursor).values())
    with read_only(lake_of(settings)) as conn:
        if conn is None:
            report.pending_requests = pending
            return report
        for key in failing_keys(conn):
            (report.failed if key["acknowledged_by"] is None else report.acknowledged).append(key)
        report.waiting = waiting_files(conn)
        done = ledgered(conn, [p.file for p in pending])
    attempted = {(str(w["file_key"]), str(w["etag"])) for w in report.waiting}
    report.pending_requests = [p for p in pending if (p.file.key, p.file.etag) not in done | attempted]
    return report


def operator_name() -> str:
    """Who is at the terminal: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return "unknown"


def acknowledge_file(
    settings: Settings, key: str, reason: str, by: str | None = None
) -> Acknowledgement | None:
    """`files --ack`: the newest version of `key` will not be fixed, says `by` (the OS user) now; the state
    checks stop counting that version. None when the ledger has no version of `key`."""
    lake = lake_of(settings)
    if not lake.exists():
        return None
    with connect(lake) as conn:
        return acknowledge(conn, key, by=by or operator_name(), reason=reason, now=datetime.now(UTC))
