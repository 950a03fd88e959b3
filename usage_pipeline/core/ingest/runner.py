"""Ingesting a batch of file versions: fetch and parse the next file while the current one is written."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import duckdb
from polars.exceptions import PanicException

from usage_pipeline.core.ingest.files import classify_file
from usage_pipeline.core.ingest.ledger import ledgered, record_attempt_error, start_attempts
from usage_pipeline.core.ingest.model import (
    REASON_UNREADABLE,
    STATUS_EMPTY,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    STATUS_WITH_ERRORS,
    FileVersion,
    ParsedFile,
    ValidationLimits,
    arrival_order,
)
from usage_pipeline.core.ingest.parse import parse_file
from usage_pipeline.core.ingest.s3 import ObjectGone
from usage_pipeline.core.ingest.spool import DEFAULT_CHUNK_BYTES, Body, discard
from usage_pipeline.core.ingest.store import FileOutcome, ledger_outcome, write_file_group, write_file_version
from usage_pipeline.core.text import plural

FILE_ROW_COLUMNS = (
    "file",
    "status",
    "reason",
    "detail",
    "total",
    "accepted",
    "duplicate",
    "rejected",
    "already_ingested",
)

L = TypeVar("L")  # what loading a file gives
# The bytes of a version (big ones in a temporary file, removed once parsed) and the version S3 served.
Fetch = Callable[[FileVersion], tuple[Body, FileVersion]]
Describe = Callable[[BaseException], str]


def describe_briefly(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@dataclass(frozen=True)
class Unavailable:
    """A version that could not be read this time (S3 down, throttled, cut off): it stays pending."""

    file: FileVersion
    error: str


@dataclass(frozen=True)
class FileCounts:
    """How the files of one run ended. Versions the run found already in the ledger (a retried run) are
    counted apart, not by their status: this run did not ingest them."""

    total: int
    failed: int
    succeeded: int
    with_errors: int
    empty: int
    unavailable: int
    already_ingested: int
    rows_rejected: int


def describe_run(counts: FileCounts) -> str:
    """How the run's files ended, in one sentence: "2 of 3 files failed; 1 file ingested"."""
    if not counts.total:
        return "no files in this run"
    of_all = f"of {plural(counts.total, 'file')}"
    parts = []
    if counts.failed:
        parts.append(f"{counts.failed} {of_all} failed")
    if counts.unavailable:
        parts.append(f"{counts.unavailable} {of_all} could not be read and will be retried")
    ingested = counts.succeeded + counts.with_errors + counts.empty
    if ingested:
        extras = [f"{counts.with_errors} with rejected rows"] if counts.with_errors else []
        extras += [f"{counts.empty} empty"] if counts.empty else []
        parts.append(", ".join([f"{plural(ingested, 'file')} ingested", *extras]))
    if counts.already_ingested:
        parts.append(f"{plural(counts.already_ingested, 'file')} already ingested by an earlier run")
    return "; ".join(parts)


@dataclass
class IngestReport:
    """What one ingest run did, for metadata, the CLI and the benchmark."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def new_outcomes(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if not o.already_ingested]

    def total(self, attribute: str) -> int:
        return sum(getattr(o, attribute) for o in self.new_outcomes)

    @property
    def events_per_second(self) -> float:
        return self.total("rows_total") / self.seconds if self.seconds else 0.0

    def file_counts(self) -> FileCounts:
        statuses = Counter(o.status for o in self.new_outcomes)
        return FileCounts(
            total=len(self.outcomes) + len(self.unavailable),
            failed=statuses[STATUS_FAILED],
            succeeded=statuses[STATUS_SUCCEEDED],
            with_errors=statuses[STATUS_WITH_ERRORS],
            empty=statuses[STATUS_EMPTY],
            unavailable=len(self.unavailable),
            already_ingested=len(self.outcomes) - len(self.new_outcomes),
            rows_rejected=self.total("rows_rejected"),
        )

    def file_rows(self) -> list[dict[str, object]]:
        """One row per file of this run with its outcome (columns FILE_ROW_COLUMNS), for a UI table."""
        rows: list[dict[str, object]] = [
            {
                "file": o.key,
                "status": o.status,
                "reason": o.failed_reason or "",
                "detail": o.failed_detail or "",
                "total": o.rows_total,
                "accepted": o.rows_accepted,
                "duplicate": o.rows_duplicate,
                "rejected": o.rows_rejected,
                "already_ingested": o.already_ingested,
            }
            for o in self.outcomes
        ]
        # Not read this time, so no counts: the sensor requests them again.
        rows += [
            {"file": u.file.key, "status": "unavailable", "detail": u.error, "already_ingested": False}
            for u in self.unavailable
        ]
        return rows


def failed_file(file: FileVersion, fmt: str | None, reason: str, detail: str) -> ParsedFile:
    return ParsedFile(file=file, status="failed", format=fmt, failed_reason=reason, failed_detail=detail)


def load_file(
    file: FileVersion,
    fetch: Fetch,
    max_file_bytes: int,
    limits: ValidationLimits,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> ParsedFile:
    """Bytes -> ParsedFile. Never raises for bad data: every failure becomes a file-level reason.

    Infrastructure errors (S3 unreachable) do raise: the run fails and its files are retried. A file over
    `chunk_bytes` is parsed a chunk at a time (see parse_file).
    """
    fmt, reason, detail = classify_file(file, max_file_bytes)
    if reason is not None:
        return failed_file(file, fmt, reason, detail or reason)
    assert fmt is not None
    try:
        data, read = fetch(file)
    except ObjectGone:
        return failed_file(file, fmt, REASON_UNREADABLE, "the object was deleted before it could be read")
    try:
        if read != file:
            # The key was overwritten since it was listed: classify what was really read.
            fmt, reason, detail = classify_file(read, max_file_bytes)
            if reason is not None:
                return failed_file(read, fmt, reason, detail or reason)
            assert fmt is not None
        return parse_file(data, read, fmt, limits, chunk_bytes=chunk_bytes)
    except (Exception, PanicException) as exc:  # a parser bug on odd input must not stop the run
        return failed_file(read, fmt, REASON_UNREADABLE, f"could not be parsed: {type(exc).__name__}: {exc}")
    finally:
        discard(data)


def superseded(listed: FileVersion, read: FileVersion) -> ParsedFile:
    return failed_file(
        listed,
        None,
        REASON_UNREADABLE,
        f"the key was overwritten before this version could be read; S3 now holds version {read.etag} "
        f"(LastModified {read.last_modified:%Y-%m-%dT%H:%M:%SZ}), which is ingested as its own version",
    )


# Loading ahead of the writer: small files are mostly S3 round trips, so several load side by side; big
# files one at a time (no more than PREFETCH_BYTES of listed size in flight, but always the next file).
PREFETCH_WORKERS = 4
PREFETCH_BYTES = 64 << 20
# Small files share a transaction (a lake commit and each statement cost the same whatever they carry):
# a group is written once it holds GROUP_MAX_ROWS rows or GROUP_MAX_FILES files. A file this big or
# bigger is written on its own, as before.
GROUP_MAX_ROWS = 500_000
GROUP_MAX_FILES = 500


def prefetched(files: Sequence[FileVersion], load: Callable[[FileVersion], L]) -> Iterator[L]:
    """Yield loaded files in order, loading the next ones in threads while the caller writes.

    A big file read in chunks is written alone: nothing more starts loading until the caller is done with
    it. Files loaded but never handed over (the caller stopped) have their spilled chunks removed.
    """
    with ThreadPoolExecutor(max_workers=PREFETCH_WORKERS, thread_name_prefix="usage-prefetch") as pool:
        ahead: deque[tuple[Future[L], int]] = deque()
        queue = deque(files)
        try:
            while queue or ahead:
                while queue and (
                    not ahead
                    or (
                        len(ahead) < PREFETCH_WORKERS
                        and sum(size for _, size in ahead) + queue[0].size <= PREFETCH_BYTES
                    )
                ):
                    file = queue.popleft()
                    ahead.append((pool.submit(load, file), file.size))
                future, _ = ahead.popleft()
                result = future.result()
                if queue and not ahead and not _spilled(result):  # one loading while the caller writes
                    file = queue.popleft()
                    ahead.append((pool.submit(load, file), file.size))
                yield result
        finally:
            for future, _ in ahead:
                left = future.result()
                if isinstance(left, ParsedFile):
                    left.discard()


def _rows(parsed: ParsedFile) -> int:
    return parsed.events_count + parsed.rejects_count


def _spilled(loaded: object) -> bool:
    return isinstance(loaded, ParsedFile) and loaded.spill is not None


def ingest_files(
    files: Sequence[FileVersion],
    *,
    fetch: Fetch,
    conn: duckdb.DuckDBPyConnection,
    max_file_bytes: int,
    limits: ValidationLimits,
    run_id: str | None,
    stripe_dedup_window: timedelta = timedelta(hours=24),
    on_file: Callable[[FileOutcome], None] | None = None,
    on_unavailable: Callable[[Unavailable], None] | None = None,
    describe: Describe = describe_briefly,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> IngestReport:
    """Ingest each file version once, in arrival order; each file commits whole with its ledger row (small
    files share a transaction: see write_file_group).

    A file over `chunk_bytes` (decompressed) is read and validated a chunk at a time into temporary files,
    which DuckDB then streams into the lake, still in the file's one transaction: memory follows the chunk
    size, not the file's.

    A version that cannot be read now (an S3 error that outlasted the client's retries) does not stop the
    others: its attempt and error are recorded in file_attempts and it is reported as unavailable, for
    the caller to fail the run and the sensor to request it again.
    """
    started = time.perf_counter()
    report = IngestReport()
    ordered = arrival_order(files)
    done = ledgered(conn, ordered)
    todo = [f for f in ordered if (f.key, f.etag) not in done]
    start_attempts(conn, todo, run_id, datetime.now(UTC))

    counting = threading.Lock()

    def load(file: FileVersion) -> ParsedFile | Unavailable:
        try:
            parsed = load_file(file, fetch, max_file_bytes, limits, chunk_bytes=chunk_bytes)
        except Exception as exc:  # infrastructure: bad data never raises out of load_file
            return Unavailable(file, describe(exc))
        if parsed.status != "failed":
            with counting:  # loads run in several threads
                report.bytes_read += parsed.file.size
        return parsed

    group: list[ParsedFile] = []
    group_rows = 0  # rows of the files in `group`

    def report_outcomes(outcomes: Sequence[FileOutcome]) -> None:
        for outcome in outcomes:
            report.outcomes.append(outcome)
            if on_file is not None:
                on_file(outcome)

    def write_group() -> None:
        if not group:
            return
        if len(group) == 1:
            report_outcomes([write_file_version(conn, group[0], run_id=run_id, stripe_dedup_window=window)])
        else:
            try:
                outcomes = write_file_group(conn, group, run_id=run_id, stripe_dedup_window=window)
            except duckdb.Error:
                # Something in one file the shared statements choke on: each file alone, as before, so
                # only that one can fail.
                outcomes = [
                    write_file_version(conn, p, run_id=run_id, stripe_dedup_window=window) for p in group
                ]
            report_outcomes(outcomes)
        group.clear()
        nonlocal group_rows
        group_rows = 0

    def write(parsed: ParsedFile) -> None:
        nonlocal group_rows
        if parsed.spill is not None:  # a big file read in chunks: its own transaction, after the group's
            write_group()
            try:
                report_outcomes([write_file_version(conn, parsed, run_id=run_id, stripe_dedup_window=window)])
            finally:
                parsed.discard()
            return
        rows = _rows(parsed)
        if group and (group_rows + rows > GROUP_MAX_ROWS or len(group) >= GROUP_MAX_FILES):
            write_group()
        group.append(parsed)
        group_rows += rows

    window = stripe_dedup_window
    for file, parsed in zip(todo, prefetched(todo, load), strict=True):
        if isinstance(parsed, Unavailable):
            record_attempt_error(conn, parsed.file, run_id, parsed.error)
            report.unavailable.append(parsed)
            if on_unavailable is not None:
                on_unavailable(parsed)
            continue
        write(parsed)
        if parsed.file != file:
            # The listed version was overwritten before it could be read: what S3 now holds was ingested
            # as its own version; the listed one can never be read again and gets its ledger row here.
            write(superseded(file, parsed.file))
    write_group()
    for file in ordered:
        if (file.key, file.etag) in done:
            outcome = ledger_outcome(conn, file.key, file.etag)
            if outcome is not None:
                report.outcomes.append(outcome)
    report.seconds = time.perf_counter() - started
    return report
