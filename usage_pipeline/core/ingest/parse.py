"""One file version's bytes -> a ParsedFile: decompress, read the records, detect the layout, validate."""

from __future__ import annotations

import duckdb
import polars as pl

from usage_pipeline.core.ingest.chunked import read_in_chunks
from usage_pipeline.core.ingest.csv_reader import read_csv
from usage_pipeline.core.ingest.gunzip import BadGzip, TooLarge, decompress
from usage_pipeline.core.ingest.json_reader import read_json_array, read_json_lines
from usage_pipeline.core.ingest.layouts import LayoutSpec, detect_layout, first_missing_column
from usage_pipeline.core.ingest.model import (
    REASON_TOO_LARGE,
    REASON_UNKNOWN_LAYOUT,
    REASON_UNREADABLE,
    FileVersion,
    ParsedFile,
    ValidationLimits,
    missing_column,
)
from usage_pipeline.core.ingest.records import (
    RecordTable,
    Unreadable,
    WholeFileNeeded,
    check_head,
    check_text,
    utf8_error,
)
from usage_pipeline.core.ingest.spool import DEFAULT_CHUNK_BYTES, Body, discard, head_bytes, pieces, read_all
from usage_pipeline.core.ingest.validate import validate_rows

__all__ = ["parse_file"]

_FORMAT_NAMES = {"csv": "CSV", "json": "JSON (an array of objects)", "jsonl": "JSON Lines"}
_READERS = {"csv": read_csv, "json": read_json_array, "jsonl": read_json_lines}
# Formats read in chunks when big; a JSON array is always read in one piece (its elements are not lines).
_CHUNKED = ("csv", "jsonl")
_MAX_DETAIL_CHARS = 300


def parse_file(
    data: Body,
    file: FileVersion,
    fmt: str,
    limits: ValidationLimits,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> ParsedFile:
    """Turn the bytes of `file` (format as from classify_file, e.g. "csv.gz") into events and rejected rows.

    Bad data never raises: an unreadable file, an unknown layout or a missing column is a `failed` ParsedFile,
    a file without records is `empty`, and each bad record is a reject with its error code. A CSV or JSON
    Lines text over `chunk_bytes` is read, validated and spilled to local disk a chunk at a time (the
    ParsedFile then holds a Spill: `discard()` it when written); `data` itself is left to the caller.
    """

    def failed(reason: str, detail: str) -> ParsedFile:
        return _failed(file, fmt, reason, detail)

    try:
        # Gzip is recognised by its bytes, whatever the name says, and only ever opened within the bound.
        text, layers = decompress(data, limits.max_decompressed_bytes, spool_over=chunk_bytes)
    except TooLarge:
        return failed(
            REASON_TOO_LARGE,
            f"The file expands to more than {limits.max_decompressed_bytes:,} bytes when decompressed "
            "(USAGE_MAX_FILE_BYTES).",
        )
    except BadGzip as exc:
        return failed(REASON_UNREADABLE, f"The file is not valid gzip: {exc}.")
    try:
        return _parse_text(text, layers, file, fmt, limits, chunk_bytes)
    finally:
        if text is not data:
            discard(text)


def _parse_text(
    text: Body, layers: int, file: FileVersion, fmt: str, limits: ValidationLimits, chunk_bytes: int
) -> ParsedFile:
    if fmt.endswith(".gz") and layers == 0 and len(text):
        return _failed(
            file,
            fmt,
            REASON_UNREADABLE,
            f"The file is not valid gzip: its name ends in .gz but it starts with "
            f"{head_bytes(text, 8).hex(' ')!r}, not with the gzip bytes 1f 8b.",
        )
    base = fmt.removesuffix(".gz")
    if not len(text) or all(piece.isspace() for piece in pieces(text)):
        return ParsedFile(file=file, status="empty", format=fmt)
    if len(text) > chunk_bytes and base in _CHUNKED:
        try:
            return _parse_in_chunks(text, file, fmt, limits, chunk_bytes)
        except (WholeFileNeeded, pl.exceptions.PolarsError, pl.exceptions.PanicException, duckdb.Error):
            pass  # read in one piece, which gives the file's verdict and its words
    return _parse_whole(read_all(text), file, fmt, limits)


def _parse_whole(data: bytes, file: FileVersion, fmt: str, limits: ValidationLimits) -> ParsedFile:
    base = fmt.removesuffix(".gz")
    try:
        table = _READERS[base](check_text(data))
    except Unreadable as exc:
        return _failed(file, fmt, REASON_UNREADABLE, str(exc))
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, duckdb.Error) as exc:
        detail = utf8_error(data) or f"The file is not valid {_FORMAT_NAMES[base]}: {_shorten(exc)}"
        return _failed(file, fmt, REASON_UNREADABLE, detail)
    del data  # the records hold what is needed: a decompressed copy need not outlive them
    if table.height == 0:  # a CSV header only, `[]`, `{}`, only blank lines or empty objects
        return ParsedFile(file=file, status="empty", format=fmt)
    return _validated(table, file, fmt, limits)


def _parse_in_chunks(
    text: Body, file: FileVersion, fmt: str, limits: ValidationLimits, chunk_bytes: int
) -> ParsedFile:
    try:
        start = check_head(head_bytes(text, 1 << 13))
    except Unreadable as exc:
        return _failed(file, fmt, REASON_UNREADABLE, str(exc))
    try:
        found = read_in_chunks(text, start, fmt.removesuffix(".gz"), file, limits, chunk_bytes, _decided)
    except Unreadable as exc:  # a CSV header that names a column twice: the first chunk says it all
        return _failed(file, fmt, REASON_UNREADABLE, str(exc))
    if found.empty:
        return ParsedFile(file=file, status="empty", format=fmt)
    if found.spill is None:
        failure = _layout_failure(found.columns, file, fmt)
        assert failure is not None
        return failure
    assert found.spec is not None
    return ParsedFile(
        file=file,
        status="ok",
        format=fmt,
        layout=found.spec.name,
        rows_total=found.rows_total,
        rows_duplicate_in_file=found.duplicates,
        spill=found.spill,
    )


def _failed(file: FileVersion, fmt: str, reason: str, detail: str, layout: str | None = None) -> ParsedFile:
    return ParsedFile(
        file=file, status="failed", format=fmt, layout=layout, failed_reason=reason, failed_detail=detail
    )


def _decided(columns: list[str]) -> LayoutSpec | None:
    """The layout of a file with these columns, or None when the file fails on them."""
    spec, _ = detect_layout(columns)
    return spec if spec is not None and first_missing_column(spec, columns) is None else None


def _layout_failure(columns: list[str], file: FileVersion, fmt: str) -> ParsedFile | None:
    """The failed ParsedFile of a file whose columns name no layout or miss a required one, else None."""
    spec, detail = detect_layout(columns)
    if spec is None:
        return _failed(file, fmt, REASON_UNKNOWN_LAYOUT, detail or REASON_UNKNOWN_LAYOUT)
    missing = first_missing_column(spec, columns)
    if missing is not None:
        detail = f"The file looks like the {spec.label} layout but has no {missing!r} column."
        return _failed(file, fmt, missing_column(missing), detail, spec.name)
    return None


def _validated(table: RecordTable, file: FileVersion, fmt: str, limits: ValidationLimits) -> ParsedFile:
    """The records of a readable file in its layout: events, rejects, in-file duplicates."""
    failure = _layout_failure(table.columns, file, fmt)
    if failure is not None:
        return failure
    spec = _decided(table.columns)
    assert spec is not None
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
