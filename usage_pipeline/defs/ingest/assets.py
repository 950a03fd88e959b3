"""Dagster assets of the ingest stage: one multi-asset loads a batch of file versions into DuckDB."""

from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from usage_pipeline.core.errors import describe_infrastructure_error
from usage_pipeline.core.ingest import findings as quality
from usage_pipeline.core.ingest.model import STATUS_FAILED, FileVersion, ValidationLimits
from usage_pipeline.core.ingest.runner import (
    FILE_ROW_COLUMNS,
    FileCounts,
    IngestReport,
    Unavailable,
    describe_briefly,
    describe_run,
    ingest_files,
)
from usage_pipeline.core.ingest.s3 import read_version
from usage_pipeline.core.ingest.store import FileOutcome, describe_outcome
from usage_pipeline.core.storage.values import naive_utc
from usage_pipeline.core.text import plural
from usage_pipeline.defs.metadata import (
    check_result,
    check_spec,
    row_counts,
    table,
    table_asset_spec,
    table_entries,
)
from usage_pipeline.defs.resources import PipelineSettings, UsageLake, infrastructure_failures

INGEST_GROUP = "ingest"
# Run tags carry each ingest run's file outcome counts (see _run_tags).
RUN_TAG_PREFIX = "usage_pipeline/"
# A run of at most this many files logs a line per file; a bigger one logs its problem files and progress.
LOG_EACH_FILE_UP_TO = 50
LOG_PROGRESS_EVERY = 100

# A tuple, not module attributes: dg's defs folder loads every AssetSpec found at module level as an asset.
INGEST_SPECS = (
    table_asset_spec(
        "ingested_files",
        domain=INGEST_GROUP,
        kinds={"s3", "duckdb"},
        description="The file ledger: one row per S3 file version with its status, reason and row counts.",
    ),
    table_asset_spec(
        "usage_events",
        domain=INGEST_GROUP,
        kinds={"polars", "duckdb"},
        description="Accepted, deduplicated usage events (both layouts), with the S3 file and row of each.",
    ),
    table_asset_spec(
        "rejected_events",
        domain=INGEST_GROUP,
        kinds={"polars", "duckdb"},
        description="Rejected rows with their error code, message and the raw record.",
    ),
)
INGEST_TABLES = ("ingested_files", "usage_events", "rejected_events")

CHECKS = [
    check_spec(
        "no_failed_files",
        asset="ingested_files",
        domain=INGEST_GROUP,
        description="No key's newest file version failed, unless an operator acknowledged it (ERROR).",
    ),
    check_spec(
        "no_rejected_rows",
        asset="ingested_files",
        domain=INGEST_GROUP,
        description="No key's newest version has rejected rows, unless acknowledged (WARN, with samples).",
    ),
    check_spec(
        "row_counts_balance",
        asset="ingested_files",
        domain=INGEST_GROUP,
        description="rows_total = accepted + duplicate + rejected, and the stored rows match the ledger.",
    ),
    check_spec(
        "no_files_waiting",
        asset="ingested_files",
        domain=INGEST_GROUP,
        description="No file version a run took up is still without a ledger row after an error or a retry.",
    ),
    check_spec(
        "dedup_keys_unique",
        asset="usage_events",
        domain=INGEST_GROUP,
        description="No dedup key is stored twice in the event-time range the run wrote to.",
    ),
]


class FileVersionConfig(dg.Config):
    key: str
    etag: str
    size: int
    last_modified: str  # ISO 8601, UTC

    def to_version(self) -> "FileVersion":
        return FileVersion(self.key, self.etag, self.size, datetime.fromisoformat(self.last_modified))

    @classmethod
    def from_version(cls, file: FileVersion) -> dict[str, object]:
        return {
            "key": file.key,
            "etag": file.etag,
            "size": file.size,
            "last_modified": file.last_modified.astimezone(UTC).isoformat(),
        }


class IngestConfig(dg.Config):
    """The file versions this run ingests (the sensor fills it in)."""

    files: list[FileVersionConfig] = Field(default_factory=list)


def _named_counts(counts: FileCounts) -> dict[str, int]:
    """`files_total`, `files_failed`, …, `rows_rejected`: the run's counts, named as in metadata and tags."""
    return {
        name if name.startswith("rows_") else f"files_{name}": value for name, value in asdict(counts).items()
    }


def _run_tags(counts: FileCounts) -> dict[str, str]:
    """The counts as run tags (`usage_pipeline/files_failed`, …): the Runs list can be filtered by them."""
    return {f"{RUN_TAG_PREFIX}{name}": str(value) for name, value in _named_counts(counts).items()}


def _materialization_metadata(report: IngestReport, counts: FileCounts, summary: str) -> dict[str, object]:
    """This run's own view of its files (the state checks judge the whole ledger instead)."""
    return {
        # MaterializeResult has no description in Dagster 1.13 (only AssetMaterialization does, and a
        # second one would count as a second materialization): the sentence leads the metadata instead.
        "summary": dg.MetadataValue.text(summary),
        **_named_counts(counts),
        "rows_total": report.total("rows_total"),
        "rows_accepted": report.total("rows_accepted"),
        "rows_duplicate": report.total("rows_duplicate"),
        "bytes_read": report.bytes_read,
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
        "events_per_second": dg.MetadataValue.float(round(report.events_per_second, 1)),
        **table_entries("files_of_this_run", report.file_rows(), FILE_ROW_COLUMNS),
    }


@dg.multi_asset(
    name="ingest_usage_files",
    specs=list(INGEST_SPECS),
    check_specs=CHECKS,
    # No pool: ingest runs write side by side (the lake serialises only their commits).
)
def ingest_usage_files(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    s3: S3Resource,
    lake: UsageLake,
    settings: PipelineSettings,
):
    """Load, validate and deduplicate the run's file versions into the lake, one transaction per file."""
    cfg = settings.get()
    client = s3.get_client()
    files = [f.to_version() for f in config.files]
    since = naive_utc(datetime.now(UTC)) - timedelta(seconds=1)

    def log_unavailable(item: Unavailable) -> None:
        context.log.error(f"could not read {item.file.key} (it stays pending and is retried): {item.error}")

    written = 0

    def log(outcome: FileOutcome) -> None:
        # Every file with a problem gets its own line; clean files too in a small run. A run of hundreds of
        # small files logs its progress instead: each event-log line costs a few ms, as much as the file.
        nonlocal written
        written += 1
        if outcome.status == STATUS_FAILED:
            context.log.warning(describe_outcome(outcome))
        elif outcome.rows_rejected or len(files) <= LOG_EACH_FILE_UP_TO:
            context.log.info(describe_outcome(outcome))
        elif written % LOG_PROGRESS_EVERY == 0:
            context.log.info(f"{written} of {plural(len(files), 'file')} written")

    with infrastructure_failures(settings.get()), lake.get_connection() as conn:
        report = ingest_files(
            files,
            fetch=lambda f: read_version(client, cfg.bucket, f),
            conn=conn,
            max_file_bytes=cfg.max_file_bytes,
            limits=ValidationLimits(cfg.max_event_age, cfg.max_future_skew, cfg.max_file_bytes),
            run_id=context.run.run_id,
            stripe_dedup_window=cfg.stripe_dedup_window,
            on_file=log,
            on_unavailable=log_unavailable,
            describe=lambda exc: describe_infrastructure_error(exc, cfg) or describe_briefly(exc),
        )
        # The two state checks read the whole ledger, so even an empty run re-evaluates them truthfully.
        findings = {
            ("ingested_files", "no_failed_files", dg.AssetCheckSeverity.ERROR): quality.failed_files(
                conn, datetime.now(UTC)
            ),
            ("ingested_files", "no_rejected_rows", dg.AssetCheckSeverity.WARN): quality.rejected_rows(conn),
            ("ingested_files", "row_counts_balance", dg.AssetCheckSeverity.ERROR): quality.row_counts_balance(
                conn, context.run.run_id, since
            ),
            ("ingested_files", "no_files_waiting", dg.AssetCheckSeverity.ERROR): quality.files_waiting(
                conn, datetime.now(UTC)
            ),
            ("usage_events", "dedup_keys_unique", dg.AssetCheckSeverity.ERROR): quality.dedup_keys_unique(
                conn, since, cfg.stripe_dedup_window
            ),
        }
        table_rows = {name: row_counts(conn, name) for name in INGEST_TABLES}
    counts = report.file_counts()
    summary = describe_run(counts)
    metadata = _materialization_metadata(report, counts, summary)
    yield dg.MaterializeResult(
        asset_key="ingested_files", metadata={**metadata, **table_rows["ingested_files"]}
    )
    yield dg.MaterializeResult(
        asset_key="usage_events",
        metadata={
            **{k: metadata[k] for k in ("rows_accepted", "rows_duplicate", "seconds", "events_per_second")},
            **table_rows["usage_events"],
        },
    )
    yield dg.MaterializeResult(
        asset_key="rejected_events",
        metadata={"rows_rejected": metadata["rows_rejected"], **table_rows["rejected_events"]},
    )
    for (asset_key, name, severity), finding in findings.items():
        yield check_result(
            asset_key=asset_key,
            check_name=name,
            passed=finding.passed,
            severity=severity,
            summary=finding.summary,
            counts=finding.counts,
            examples=finding.examples,
        )
    context.instance.add_run_tags(context.run.run_id, _run_tags(counts))
    if counts.failed or counts.unavailable:
        context.log.warning(summary)
    else:
        context.log.info(summary)
    if report.unavailable:
        first = report.unavailable[0]
        raise dg.Failure(
            description=(
                f"{first.error} — {len(report.unavailable)} of {plural(len(files), 'file')} could not be "
                "read and stay pending; the sensor requests them again with backoff"
            ),
            metadata={
                "unavailable": table([{"file": u.file.key, "error": u.error} for u in report.unavailable])
            },
        )


INGEST_JOB_NAME = "ingest_files"

ingest_job = dg.define_asset_job(
    INGEST_JOB_NAME,
    selection=dg.AssetSelection.assets(ingest_usage_files),
    description="Ingest a batch of S3 file versions (requested by the usage_files_sensor or the CLI).",
    executor_def=dg.in_process_executor,
)
