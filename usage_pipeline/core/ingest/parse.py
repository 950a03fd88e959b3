"""One file version's bytes -> a ParsedFile: decompress, read the records, detect the layout, validate."""

from __future__ import annotations

import duckdb
import polars as pl

from usage_pipeline.core.ingest.csv_reader import read_csv
from usage_pipeline.core.ingest.gunzip import BadGzip, TooLarge, decompress
from usage_pipeline.core.ingest.json_reader import read_json_array, read_json_lines
from usage_pipeline.core.ingest.layouts import detect_layout, first_missing_column
from usage_pipeline.core.ingest.model import (
    REASON_TOO_LARGE,
    REASON_UNKNOWN_LAYOUT,
    REASON_UNREADABLE,
    FileVersion,
    ParsedFile,
    ValidationLimits,
    missing_column,
)
from usage_pipeline.core.ingest.records import RecordTable, Unreadable, check_text, utf8_error
from usage_pipeline.core.ingest.validate import validate_rows

__all__ = ["parse_file"]

_FORMAT_NAMES = {"csv": "CSV", "json": "JSON (an array of objects)", "jsonl": "JSON Lines"}
_READERS = {"csv": read_csv, "json": read_json_array, "jsonl": read_json_lines}
_MAX_DETAIL_CHARS = 300


def parse_file(data: bytes, file: FileVersion, fmt: str, limits: ValidationLimits) -> ParsedFile:
    """Turn the bytes of `file` (format as from classify_file, e.g. "csv.gz") into events and rejected rows.

    Bad data never raises: an unreadable file, an unknown layout or a missing column is a `failed` ParsedFile,
    a file without records is `empty`, and each bad record is a reject with its error code.
    """

    def failed(reason: str, detail: str) -> ParsedFile:
        return _failed(file, fmt, reason, detail)

    try:
        # Gzip is recognised by its bytes, whatever the name says, and only ever opened within the bound.
        data, layers = decompress(data, limits.max_decompressed_bytes)
    except TooLarge:
        return failed(
            REASON_TOO_LARGE,
            f"The file expands to more than {limits.max_decompressed_bytes:,} bytes when decompressed "
            "(USAGE_MAX_FILE_BYTES).",
        )
    except BadGzip as exc:
        return failed(REASON_UNREADABLE, f"The file is not valid gzip: {exc}.")
    if fmt.endswith(".gz") and layers == 0 and data:
        return failed(
            REASON_UNREADABLE,
            f"The file is not valid gzip: its name ends in .gz but it starts with {data[:8].hex(' ')!r}, "
            "not with the gzip bytes 1f 8b.",
        )
    base = fmt.removesuffix(".gz")
    if not data or data.isspace():
        return ParsedFile(file=file, status="empty", format=fmt)
    try:
        table = _READERS[base](check_text(data))
    except Unreadable as exc:
        return failed(REASON_UNREADABLE, str(exc))
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, duckdb.Error) as exc:
        detail = utf8_error(data) or f"The file is not valid {_FORMAT_NAMES[base]}: {_shorten(exc)}"
        return failed(REASON_UNREADABLE, detail)
    del data  # the records hold what is needed: a decompressed copy need not outlive them
    if table.height == 0:  # a CSV header only, `[]`, `{}`, only blank lines or empty objects
        return ParsedFile(file=file, status="empty", format=fmt)
    return _validated(table, file, fmt, limits)


def _failed(file: FileVersion, fmt: str, reason: str, detail: str, layout: str | None = None) -> ParsedFile:
    return ParsedFile(
        file=file, status="failed", format=fmt, layout=layout, failed_reason=reason, failed_detail=detail
    )


def _validated(table: RecordTable, file: FileVersion, fmt: str, limits: ValidationLimits) -> ParsedFile:
    """The records of a readable file in its layout: events, rejects, in-file duplicates."""
    spec, detail = detect_layout(table.columns)
    if spec is None:
        return _failed(file, fmt, REASON_UNKNOWN_LAYOUT, detail or REASON_UNKNOWN_LAYOUT)
    missing = first_missing_column(spec, table.columns)
    if missing is not None:
        detail = f"The file looks like the {spec.label} layout but has no {missing!r} column."
        return _failed(file, fmt, missing_column(missing), detail, spec.name)
    try:
        events, rejects, duplicates = validate_rows(table, spec, file, limits)
    except pl.exceptions.PanicException as exc:  # a polars bug on odd data must not stop the whole run
        detail = f"polars could not process the file: {_shorten(exc)}"
        return _failed(file, fmt, REASON_UNREADABLE, detail, spec.name)
    return ParsedFile(
        file=file,
        status="ok",
        format=fmt,
        layout=spec.name,
        rows_total=table.height,
        rows_duplicate_in_file=duplicates,
        events=events,
        rejects=rejects,
    )


def _shorten(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"
