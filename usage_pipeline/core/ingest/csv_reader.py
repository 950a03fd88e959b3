"""CSV files -> RecordTable: polars reads the fields; a record with more or fewer fields is malformed.

polars pads a short record with nulls and, told to, cuts a long one; which records those were is found
from the text: a record has as many fields as it has commas outside its values, plus one.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections import Counter

import polars as pl

from usage_pipeline.core.ingest.records import (
    RecordTable,
    Unreadable,
    WholeFileNeeded,
    nulls,
    physical_lines,
    utf8_error,
)

__all__ = ["read_csv"]

_LEADING_BLANK_LINES = re.compile(rb"(?:[ \t]*\r?\n)*")
_BATCH_ROWS = 100_000


class _Fallback(Exception):
    """polars cannot read the file or its records cannot be matched to lines: read it with Python's csv."""


def read_csv(data: bytes, *, row_offset: int = 0, line_offset: int = 0, whole: bool = True) -> RecordTable:
    """The records after the header; blank lines are skipped but keep their place in the numbering.

    A chunk of a big file (`whole` False) is its header and some of its records: they are numbered from
    `row_offset` + 1, their lines from `line_offset` after the header's; a chunk that polars cannot read
    raises WholeFileNeeded.
    """
    skip = data.count(b"\n", 0, _LEADING_BLANK_LINES.match(data).end())  # type: ignore[union-attr]
    try:
        return _read_polars(data, skip, row_offset, line_offset)
    except _Fallback:
        if not whole:
            raise WholeFileNeeded from None
        problem = utf8_error(data)  # the likeliest reason polars gave up, and Python's csv would too
        if problem is not None:
            raise Unreadable(problem) from None
        return _read_python(data)


def _frame(data: bytes, skip: int, truncate: bool) -> pl.DataFrame:
    # The header row is read as a record: it sets the number of columns, and names may repeat.
    return pl.read_csv(
        data,
        has_header=False,
        infer_schema=False,
        skip_lines=skip,
        truncate_ragged_lines=truncate,
        raise_if_empty=False,
    )


def _read_polars(data: bytes, skip: int, row_offset: int = 0, line_offset: int = 0) -> RecordTable:
    ragged = False
    try:
        frame = _frame(data, skip, truncate=False)
    except pl.exceptions.ComputeError as exc:
        if "more fields" not in str(exc):
            raise _Fallback from None
        ragged = True  # some record has more fields than the header: read them cut, find them below
        try:
            frame = _frame(data, skip, truncate=True)
        except pl.exceptions.PolarsError:
            raise _Fallback from None
    except pl.exceptions.PolarsError:
        raise _Fallback from None
    if frame.height == 0:
        return _empty([])
    header = _header([v if v is not None else "" for v in frame.row(0)])
    body = frame.slice(1)
    body.columns = [f"c{i}" for i in range(body.width)]
    rows = pl.int_range(row_offset + 1, row_offset + body.height + 1, eager=True, dtype=pl.Int64)
    blank = body.select(pl.all_horizontal(pl.all().is_null())).to_series()
    # A short record ends in nulls; a long one (when the file has any) can be any record.
    suspects = ~blank if ragged else ~blank & body[body.columns[-1]].is_null()
    malformed, raw_text = nulls(body.height), nulls(body.height)
    if suspects.any():
        malformed, raw_text, spaces = _field_counts(data, skip, body, suspects, line_offset)
        blank |= spaces
    fields = body.rename(dict(zip(body.columns, header, strict=True)))
    if blank.any():
        keep = ~blank
        fields, rows, malformed, raw_text = (x.filter(keep) for x in (fields, rows, malformed, raw_text))
    return RecordTable(
        fields=fields,
        rows=rows,
        malformed=malformed,
        raw_text=raw_text,
        columns=header,
        body_records=body.height,
    )


def _header(names: list[str]) -> list[str]:
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        name = repeated[0]
        where = ", ".join(str(i + 1) for i, n in enumerate(names) if n == name)
        raise Unreadable(
            f"The header names the column {name!r} more than once (columns {where}); each column must "
            "have its own name."
        )
    return names


def _field_counts(
    data: bytes, skip: int, body: pl.DataFrame, suspects: pl.Series, line_offset: int
) -> tuple[pl.Series, pl.Series, pl.Series]:
    """(malformed message, raw text, line of spaces) per body record, looked at for `suspects` only.

    Records are matched to lines by their quotes: a line starts a record unless a quoted field is still
    open, that is unless the lines before it in the body hold an odd number of quotes.
    """
    lines = physical_lines(data).slice(skip)
    quotes = lines.str.count_matches('"', literal=True).fill_null(0)
    starts = (quotes.cum_sum() - quotes) % 2 == 0
    if starts.sum() != body.height + 1:
        raise _Fallback  # quoting that the line split cannot follow: let Python's csv read the file
    wanted = suspects.arg_true()
    record = starts.cast(pl.Int64).cum_sum() - 2  # -1: the header's lines
    texts = (
        pl.DataFrame(
            [
                record.alias("record"),
                pl.int_range(skip + 1, skip + lines.len() + 1, eager=True, dtype=pl.Int64).alias("line"),
                lines.fill_null("").alias("text"),
            ]
        )
        .with_columns(pl.col("line") + pl.when(pl.col("record") >= 0).then(line_offset).otherwise(0))
        .filter(pl.col("record").is_in(wanted.implode()))
        .group_by("record", maintain_order=True)
        .agg(pl.col("line").first(), pl.col("text").str.join("\n"))
    )
    values = body.gather(wanted)
    text = pl.col("text")
    # Commas outside the values separate fields (a long record's cut fields are counted again below).
    inside = pl.sum_horizontal(pl.col(values.columns).str.count_matches(",", literal=True).fill_null(0))
    spaces = pl.all_horizontal(pl.lit(True), *(pl.col(c).is_null() for c in values.columns[1:]))
    counted = values.hstack(texts.select("line", "text")).select(
        (text.str.count_matches(",", literal=True) - inside + 1).alias("fields"),
        (spaces & ~text.str.contains(r"\S")).alias("spaces"),
        "line",
        "text",
    )
    long = (counted["fields"] > body.width).arg_true()
    if long.len():
        unquoted = counted["text"].gather(long).str.replace_all(r'"(?:[^"]|"")*"', "")
        counted = counted.with_columns(counted["fields"].scatter(long, unquoted.str.count_matches(",") + 1))
    wrong = (pl.col("fields") != body.width) & ~pl.col("spaces")
    checked = counted.select(
        pl.when(wrong).then(_message(pl.col("line"), pl.col("fields"), body.width)).alias("message"),
        pl.when(wrong).then(text).alias("text"),
        "spaces",
    )
    return (
        nulls(body.height).scatter(wanted, checked["message"]),
        nulls(body.height).scatter(wanted, checked["text"]),
        pl.repeat(False, body.height, eager=True).scatter(wanted, checked["spaces"]),
    )


def _message(line: pl.Expr, fields: pl.Expr, width: int) -> pl.Expr:
    return pl.format(f"the record on line {{}} has {{}} fields; the header has {width}", line, fields)


def _read_python(data: bytes) -> RecordTable:
    """The same records by Python's csv module, for quoting polars refuses (a quote inside a field)."""
    csv.field_size_limit(max(csv.field_size_limit(), min(len(data) + 1, sys.maxsize)))
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=""))
    header: list[str] | None = None
    for record in reader:
        if not _blank(record):
            header = _header(record)
            break
    if header is None:
        return _empty([])
    width, last_line = len(header), reader.line_num
    batches: list[pl.DataFrame] = []
    batch: list[tuple[int, int, int, int, list[str]]] = []  # (row, first line, last line, fields, record)
    for number, record in enumerate(reader, start=1):
        first_line, last_line = last_line + 1, reader.line_num
        if not _blank(record):
            batch.append((number, first_line, last_line, len(record), record))
        if len(batch) >= _BATCH_ROWS:
            batches.append(_batch(width, batch))
            batch = []
    batches.append(_batch(width, batch))
    frame = pl.concat(batches)  # positional names (c0, c1, …, then the line numbers): header names may clash
    first, last, count = (pl.col(f"m{i}") for i in (1, 2, 3))
    malformed = frame.select(pl.when(count != width).then(_message(first, count, width))).to_series()
    bad = malformed.is_not_null()
    raw_text = nulls(frame.height)
    if bad.any():
        lines = physical_lines(data).fill_null("")
        spans = (
            frame.filter(bad)
            .select(pl.int_range(pl.len()).alias("k"), pl.int_ranges(first - 1, last).alias("i"))
            .explode("i")
        )
        texts = (
            spans.with_columns(lines.gather(spans["i"]).alias("t"))
            .group_by("k", maintain_order=True)
            .agg(pl.col("t").str.join("\n"))["t"]
        )
        raw_text = raw_text.scatter(bad.arg_true(), texts)
    fields = frame.select(pl.col(f"c{i}").alias(name) for i, name in enumerate(header))
    return RecordTable(
        fields=fields, rows=frame.get_column("m0"), malformed=malformed, raw_text=raw_text, columns=header
    )


def _blank(record: list[str]) -> bool:
    """An empty line, a line of spaces, or a record of empty fields."""
    return not any(record) or (len(record) == 1 and not record[0].strip())


def _batch(width: int, records: list[tuple[int, int, int, int, list[str]]]) -> pl.DataFrame:
    """Records as columns c0… (a malformed record's fields are left empty) and m0…m3 for its numbers."""
    cells = [r[4] if len(r[4]) == width else [""] * width for r in records]
    data = {f"c{i}": pl.Series([c[i] or None for c in cells], dtype=pl.String) for i in range(width)}
    for i in range(4):
        data[f"m{i}"] = pl.Series([r[i] for r in records], dtype=pl.Int64)
    return pl.DataFrame(data)


def _empty(columns: list[str]) -> RecordTable:
    nothing = pl.Series([], dtype=pl.String)
    return RecordTable(
        fields=pl.DataFrame(schema=dict.fromkeys(columns, pl.String)),
        rows=pl.Series([], dtype=pl.Int64),
        malformed=nothing,
        raw_text=nothing,
        columns=columns,
    )
