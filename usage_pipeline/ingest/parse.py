"""One file version's bytes -> a ParsedFile: decompress, read with polars, detect the layout, validate."""

from __future__ import annotations

import re
import zlib

import polars as pl

from usage_pipeline.ingest.layouts import (
    as_text,
    detect_layout,
    first_missing_column,
    flatten_payload,
    layout_columns,
)
from usage_pipeline.ingest.model import (
    REASON_TOO_LARGE,
    REASON_UNKNOWN_LAYOUT,
    REASON_UNREADABLE,
    FileVersion,
    ParsedFile,
    ValidationLimits,
    missing_column,
)
from usage_pipeline.ingest.validate import validate_rows

__all__ = ["parse_file"]

_FORMAT_NAMES = {"csv": "CSV", "json": "JSON (an array of objects)", "jsonl": "JSON Lines"}
_LEADING_SPACE = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*")
_MAX_DETAIL_CHARS = 300


class _NotRecords(ValueError):
    """The document parsed, but it is not a list of records."""


class _TooLarge(Exception):
    pass


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress every gzip member, never producing more than `limit` bytes (else _TooLarge)."""
    out: list[bytes] = []
    total = 0
    while data:
        member = zlib.decompressobj(wbits=31)
        chunk = member.decompress(data, limit - total + 1)
        while True:
            total += len(chunk)
            out.append(chunk)
            if total > limit:
                raise _TooLarge
            if not member.unconsumed_tail:
                break
            chunk = member.decompress(member.unconsumed_tail, limit - total + 1)
        if not member.eof:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        data = member.unused_data
        if not data.strip(b"\x00"):  # trailing padding after the last member
            break
    return b"".join(out)


def parse_file(data: bytes, file: FileVersion, fmt: str, limits: ValidationLimits) -> ParsedFile:
    """Turn the bytes of `file` (format as from classify_file, e.g. "csv.gz") into events and rejected rows.

    Bad data never raises: an unreadable file, an unknown layout or a missing column is a `failed` ParsedFile,
    a file without records is `empty`, and each bad row is a reject with its error code.
    """

    def failed(reason: str, detail: str, layout: str | None = None) -> ParsedFile:
        return ParsedFile(
            file=file, status="failed", format=fmt, layout=layout, failed_reason=reason, failed_detail=detail
        )

    if fmt.endswith(".gz"):
        try:
            data = _gunzip(data, limits.max_decompressed_bytes)
        except _TooLarge:
            return failed(
                REASON_TOO_LARGE,
                f"The file expands to more than {limits.max_decompressed_bytes:,} bytes when decompressed "
                "(USAGE_MAX_FILE_BYTES).",
            )
        except (OSError, EOFError, zlib.error) as exc:
            return failed(REASON_UNREADABLE, f"The file is not valid gzip: {exc}.")
    base = fmt.removesuffix(".gz")
    if not data or data.isspace():
        return ParsedFile(file=file, status="empty", format=fmt)
    try:
        raw = _read(data, base)
    except _NotRecords as exc:
        return failed(REASON_UNREADABLE, str(exc))
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        return failed(REASON_UNREADABLE, f"The file is not valid {_FORMAT_NAMES[base]}: {_shorten(exc)}")
    raw, rows = _without_blank_records(raw)
    if raw.height == 0:  # a CSV header only, `[]`, `{}`, only blank lines
        return ParsedFile(file=file, status="empty", format=fmt)

    frame = raw if base == "csv" else flatten_payload(raw)
    spec, detail = detect_layout(frame.columns)
    if spec is None:
        return failed(REASON_UNKNOWN_LAYOUT, detail or REASON_UNKNOWN_LAYOUT)
    missing = first_missing_column(spec, frame.columns)
    if missing is not None:
        return failed(
            missing_column(missing),
            f"The file looks like the {spec.label} layout but has no {missing!r} column.",
            spec.name,
        )
    text = as_text(frame, layout_columns(spec, frame.columns))
    try:
        events, rejects, duplicates = validate_rows(text, raw, rows, spec, file, limits)
    except pl.exceptions.PanicException as exc:  # a polars bug on odd data must not stop the whole run
        return failed(REASON_UNREADABLE, f"polars could not process the file: {_shorten(exc)}", spec.name)
    return ParsedFile(
        file=file,
        status="ok",
        format=fmt,
        layout=spec.name,
        rows_total=raw.height,
        rows_duplicate_in_file=duplicates,
        events=events,
        rejects=rejects,
    )


def _read(data: bytes, fmt: str) -> pl.DataFrame:
    if fmt == "csv":
        # Every column as text: validation must see "1.0" or "1e9" as written, not as a parsed number.
        return pl.read_csv(data, infer_schema=False)
    if fmt == "jsonl":
        return pl.read_ndjson(data, infer_schema_length=None)
    start = _LEADING_SPACE.match(data).end()  # type: ignore[union-attr]
    first = data[start : start + 1]
    if first == b"[":
        return pl.read_json(data, infer_schema_length=None)
    if first == b"{":
        single = pl.read_json(data)
        if single.width == 0:
            return single  # `{}`: no records
        raise _NotRecords("The file holds one JSON object; a .json usage file must be an array of objects.")
    raise _NotRecords("The file is not a JSON array; a .json usage file must be an array of objects.")


def _without_blank_records(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """The records that hold at least one value, and their 1-based numbers in the file.

    A blank CSV line (a trailing one is common) or an all-empty record (`,,,`, `{}`) is not an event; it
    is skipped, not rejected, and the other records keep their numbers in the file.
    """
    if raw.width == 0:
        return raw.clear(), pl.Series(dtype=pl.Int64)
    blank = raw.select(pl.all_horizontal(pl.all().is_null())).to_series()
    numbers = pl.int_range(1, raw.height + 1, eager=True, dtype=pl.Int64)
    if not blank.any():
        return raw, numbers
    return raw.filter(~blank), numbers.filter(~blank)


def _shorten(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"
