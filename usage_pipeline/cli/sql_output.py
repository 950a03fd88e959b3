"""How `usage-pipeline sql` prints a result: an aligned table for people, or CSV for programs."""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Iterator
from typing import Literal, TextIO

import duckdb
import pyarrow as pa

from usage_pipeline.core.text import plural

Format = Literal["table", "csv"]

MAX_TABLE_ROWS = 1000  # a table shows this many rows (and counts them all); --csv prints them all
MAX_VALUE_WIDTH = 50  # longer values are cut in a table, never in CSV
BATCH_ROWS = 65_536
_NUMERIC_TYPES = {
    "tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger", "ubigint",
    "uhugeint", "float", "double", "decimal", "varint", "bignum",
}  # fmt: skip
# Control characters would break a table's lines (or drive the terminal): shown escaped, \\n, \\x1b …
_ESCAPES = {i: f"\\x{i:02x}" for i in range(32)} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _text_batches(relation: duckdb.DuckDBPyRelation) -> Iterator[pa.RecordBatch]:
    """The rows with each value as DuckDB prints it (CAST to VARCHAR: timestamps, decimals, lists and
    JSON as DuckDB's own clients show them, infinities included), streamed in Arrow batches."""
    yield from relation.select("CAST(COLUMNS(*) AS VARCHAR)").to_arrow_reader(BATCH_ROWS)


def _rows(batch: pa.RecordBatch) -> list[tuple[str | None, ...]]:
    return list(zip(*(column.to_pylist() for column in batch.columns), strict=True))


def _head_and_total(
    relation: duckdb.DuckDBPyRelation, limit: int
) -> tuple[list[tuple[str | None, ...]], int]:
    """The first `limit` rows, and how many there are in all (the rest counted, never converted)."""
    head: list[tuple[str | None, ...]] = []
    total = 0
    for batch in _text_batches(relation):
        if len(head) < limit:
            head += _rows(batch.slice(0, limit - len(head)))
        total += batch.num_rows
    return head, total


def _width(text: str) -> int:
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def _cell(value: str | None) -> str:
    if value is None:
        return "NULL"
    text = value.translate(_ESCAPES)
    if _width(text) <= MAX_VALUE_WIDTH:
        return text
    while _width(text) > MAX_VALUE_WIDTH - 1:
        text = text[: -max(1, (_width(text) - MAX_VALUE_WIDTH) // 2)]
    return text + "…"


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * (width - _width(text))
    return fill + text if right else text + fill


def render_table(
    columns: list[str], numeric: list[bool], rows: list[tuple[str | None, ...]], total: int
) -> str:
    """Aligned columns (numbers to the right), NULL as NULL, long values cut, and a row-count footer."""
    header = [name.translate(_ESCAPES) for name in columns]
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([_width(name), *(_width(row[i]) for row in cells)]) for i, name in enumerate(header)]

    def line(values: list[str]) -> str:
        return "|".join(
            f" {_pad(v, w, right)} " for v, w, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(header), "+".join("-" * (w + 2) for w in widths)]
    out += [line(row) for row in cells]
    if total > len(rows):
        out.append(
            f"({len(rows):,} of {plural(total, 'row')} shown: add a LIMIT or a WHERE, or use --csv for all)"
        )
    else:
        out.append(f"({plural(total, 'row')})")
    return "\n".join(out) + "\n"


def write_relation(
    relation: duckdb.DuckDBPyRelation, fmt: Format, out: TextIO, *, plan: bool = False
) -> None:
    """Write a result to `out`: CSV (header, every row, NULL as an empty field), an EXPLAIN plan as its
    text, or a table of the first MAX_TABLE_ROWS rows. The query runs as its rows are read, so DuckDB
    errors surface here."""
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(relation.columns)
        for batch in _text_batches(relation):
            writer.writerows(_rows(batch))
    elif plan:
        for batch in _text_batches(relation):
            out.writelines(f"{row[-1]}\n" for row in _rows(batch))
    else:
        numeric = [kind.id in _NUMERIC_TYPES for kind in relation.types]
        rows, total = _head_and_total(relation, MAX_TABLE_ROWS)
        out.write(render_table(list(relation.columns), numeric, rows, total))
