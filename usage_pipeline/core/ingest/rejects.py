"""Rejected records as rejected_events rows: code, message and raw record, each cut to its byte limit."""

from __future__ import annotations

import polars as pl

from usage_pipeline.core.ingest.model import (
    MAX_ERROR_MESSAGE_BYTES,
    MAX_RAW_RECORD_BYTES,
    REJECT_SCHEMA,
    FileVersion,
)
from usage_pipeline.core.ingest.records import RecordTable

__all__ = ["cap_bytes", "reject_rows"]

# Rejects are built this many at a time: a file of millions of bad records needs the memory of the rows
# kept, not of every message and raw record the rules could write for them.
_CHUNK_ROWS = 200_000


def reject_rows(
    checked: pl.DataFrame,
    rows: pl.Series,
    table: RecordTable,
    rule: str,
    codes: list[str],
    messages: list[pl.Expr],
    source_row: str,
    file: FileVersion,
) -> pl.DataFrame:
    """The rejected_events rows of `rows` (indices into `checked` and `table`), in file order.

    `checked[rule]` is the index of the first rule each row breaks; `messages[i]` the message of rule i,
    over the columns of `checked`.
    """
    message = pl.coalesce(pl.when(pl.col(rule) == i).then(m) for i, m in enumerate(messages))
    needed = list(dict.fromkeys([source_row, rule, *(n for m in messages for n in m.meta.root_names())]))
    pieces = [pl.DataFrame(schema=REJECT_SCHEMA)]
    for start in range(0, rows.len(), _CHUNK_ROWS):
        chunk = rows.slice(start, _CHUNK_ROWS)
        # Gathered column by column: one chunk each, so the columns line up (polars 2.1 can panic on
        # string expressions over columns whose chunks do not, as the working columns' do not).
        bad = pl.DataFrame([checked[name].gather(chunk) for name in needed])
        piece = bad.select(
            pl.lit(file.key).alias("source_file"),
            pl.lit(file.etag).alias("source_etag"),
            pl.col(source_row).alias("source_row"),
            pl.col(rule).replace_strict(dict(enumerate(codes)), return_dtype=pl.String).alias("error_code"),
            message.alias("error_message"),
        )
        piece = piece.with_columns(
            cap_bytes(piece["error_message"], MAX_ERROR_MESSAGE_BYTES),
            cap_bytes(_raw_records(table, chunk), MAX_RAW_RECORD_BYTES).alias("raw_record"),
        )
        pieces.append(piece.cast(REJECT_SCHEMA))
    return pl.concat(pieces)


def _raw_records(table: RecordTable, rows: pl.Series) -> pl.Series:
    """Records as written: their text where the reader kept it, else a JSON object of the CSV row."""
    raw_text = table.raw_text.gather(rows)
    if not raw_text.null_count():
        return raw_text
    encoded = table.fields.gather(rows).select(pl.struct(pl.all()).struct.json_encode()).to_series()
    if raw_text.null_count() == raw_text.len():
        return encoded
    return pl.select(pl.coalesce(raw_text, encoded)).to_series()


def cap_bytes(text: pl.Series, limit: int) -> pl.Series:
    """`text` cut to at most `limit` bytes of UTF-8, ending in a mark that gives the full size when cut.

    Cut by characters, never inside one: keeping `room` characters can still take more than `room` bytes,
    and dropping as many more characters as there are bytes over always fits.
    """
    over = (text.str.len_bytes() > limit).fill_null(False).arg_true()
    if not over.len():
        return text
    long = pl.col("long")
    mark = pl.format("…[truncated from {} bytes]", long.str.len_bytes())
    room = pl.lit(limit, pl.Int64) - mark.str.len_bytes().cast(pl.Int64)
    head = long.str.slice(0, room)
    too_many = (head.str.len_bytes().cast(pl.Int64) - room).clip(lower_bound=0)
    cut = head.str.slice(0, head.str.len_chars().cast(pl.Int64) - too_many) + mark
    return text.scatter(over, pl.DataFrame({"long": text.gather(over)}).select(cut).to_series())
