"""Plain data types shared by discovery, parsing, validation and the DuckDB writer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import polars as pl

if TYPE_CHECKING:
    from usage_pipeline.core.ingest.chunked import Spill

Layout = Literal["stripe", "chargebee"]
FileStatus = Literal["succeeded", "succeeded_with_errors", "failed", "skipped_empty"]

STATUS_SUCCEEDED: FileStatus = "succeeded"
STATUS_WITH_ERRORS: FileStatus = "succeeded_with_errors"
STATUS_FAILED: FileStatus = "failed"
STATUS_EMPTY: FileStatus = "skipped_empty"

# File-level failure reasons (SPEC 2-3). `missing_column:<name>` is built with missing_column().
REASON_UNSUPPORTED = "unsupported_file"
REASON_TOO_LARGE = "file_too_large"
REASON_UNREADABLE = "unreadable_file"
REASON_UNKNOWN_LAYOUT = "unknown_layout"


def missing_column(name: str) -> str:
    return f"missing_column:{name}"


# Row error codes in SPEC 3 precedence order: a row with several problems gets the first that applies.
# The one source of that order: validation sorts its rules by it.
ROW_ERROR_CODES: tuple[str, ...] = (
    "malformed_record",
    "missing_required_field",
    "invalid_timestamp",
    "timestamp_too_far_in_past",
    "timestamp_in_future",
    "invalid_identifier",
    "invalid_value",
    "invalid_properties",
    "properties_too_large",
)

# Columns of the candidate-event frame handed to the writer (before deduplication against history).
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "layout": pl.String(),
    "event_name": pl.String(),
    "customer_id": pl.String(),
    "subscription_id": pl.String(),
    "ts": pl.Datetime("ms"),  # naive, UTC
    "properties": pl.String(),  # compact JSON object
    "source_file": pl.String(),
    "source_etag": pl.String(),
    "source_row": pl.Int64(),
}

REJECT_SCHEMA: dict[str, pl.DataType] = {
    "source_file": pl.String(),
    "source_etag": pl.String(),
    "source_row": pl.Int64(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    # The record as written (JSON: its text; CSV: a JSON object of its columns, or its line when
    # malformed), at most MAX_RAW_RECORD_BYTES of it.
    "raw_record": pl.String(),
}
MAX_RAW_RECORD_BYTES = 4096
MAX_ERROR_MESSAGE_BYTES = 1024


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema=EVENT_SCHEMA)


def empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECT_SCHEMA)


@dataclass(frozen=True)
class FileVersion:
    """One version of one S3 object: the unit that is ingested exactly once."""

    key: str
    etag: str
    size: int
    last_modified: datetime  # timezone-aware UTC; the file's arrival time

    @property
    def version_id(self) -> str:
        return f"{self.key}@{self.etag}"


def arrival_order(files: Iterable[FileVersion]) -> list[FileVersion]:
    """File versions in arrival order, then key order for same-second arrivals (first occurrence wins)."""
    return sorted(files, key=lambda f: (f.last_modified, f.key, f.etag))


@dataclass(frozen=True)
class ValidationLimits:
    """The windows rows are validated against, relative to the file's arrival (SPEC 3)."""

    max_event_age: timedelta = timedelta(days=35)
    max_future_skew: timedelta = timedelta(minutes=5)
    # Gzip (recognised by its bytes, whatever the name) may expand to at most this many bytes, per layer.
    max_decompressed_bytes: int = 1 << 30


@dataclass
class ParsedFile:
    """What a file's bytes turned into: candidate events and rejected rows, or a file-level failure.

    `events` are valid rows after in-file deduplication (first occurrence wins); `rows_duplicate_in_file`
    counts the later occurrences dropped. Deduplication against stored history happens in the writer.
    A big file's events and rejects are in `spill` instead, chunk by chunk in Parquet files on local disk
    (the writer has DuckDB read them; the *_batches methods read them as frames): `discard()` the
    ParsedFile once it is written.
    """

    file: FileVersion
    status: Literal["ok", "empty", "failed"]
    format: str | None = None
    layout: Layout | None = None
    failed_reason: str | None = None
    failed_detail: str | None = None
    rows_total: int = 0
    rows_duplicate_in_file: int = 0
    events: pl.DataFrame = field(default_factory=empty_events)
    rejects: pl.DataFrame = field(default_factory=empty_rejects)
    spill: Spill | None = None

    @property
    def events_count(self) -> int:
        return self.spill.events_count if self.spill is not None else self.events.height

    @property
    def rejects_count(self) -> int:
        return self.spill.rejects_count if self.spill is not None else self.rejects.height

    def event_batches(self) -> Iterator[pl.DataFrame]:
        """The candidate events in file order, a chunk at a time (one frame for a file read in one piece)."""
        if self.spill is not None:
            yield from self.spill.event_batches()
        elif self.events.height:
            yield self.events

    def reject_batches(self) -> Iterator[pl.DataFrame]:
        if self.spill is not None:
            yield from self.spill.reject_batches()
        elif self.rejects.height:
            yield self.rejects

    def event_time_range(self) -> tuple[datetime, datetime] | None:
        """The earliest and latest `ts` of the candidate events; None without any."""
        if self.spill is not None:
            return self.spill.time_range()
        if self.events.is_empty():
            return None
        return self.events["ts"].min(), self.events["ts"].max()  # type: ignore[return-value]

    def discard(self) -> None:
        """Remove the spilled chunks from local disk (nothing to do for a file read in one piece)."""
        if self.spill is not None:
            self.spill.remove()
