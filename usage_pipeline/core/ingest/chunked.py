"""A big file's text in record-aligned chunks: each read and validated alone, its events and rejects spilled
to local disk; in-file duplicates are then found across chunks so that the first occurrence still wins.

Only the usual case is handled here: every chunk readable, the layout decided by the first chunk and not
changed by the others. Anything else (odd quoting, bytes that are not UTF-8, a JSON Lines file whose keys
change its layout) raises WholeFileNeeded, and the file is read in one piece as before: the answer is then
the one-piece answer by construction, at the one-piece memory cost, for bad files only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import polars as pl

from usage_pipeline.core.ingest.csv_reader import read_csv
from usage_pipeline.core.ingest.json_reader import is_layout_key, read_json_lines
from usage_pipeline.core.ingest.layouts import STRIPE, LayoutSpec
from usage_pipeline.core.ingest.model import REJECT_SCHEMA, FileVersion, ValidationLimits
from usage_pipeline.core.ingest.records import RecordTable, WholeFileNeeded
from usage_pipeline.core.ingest.spool import Body, open_body, remove_folder, spill_folder
from usage_pipeline.core.ingest.validate import validate_rows

__all__ = ["Chunked", "Spill", "read_in_chunks"]

# Spilled chunks are read back once or twice, from local disk: fast to write beats small.
_SPILL_COMPRESSION = "lz4"


@dataclass
class SpilledPart:
    """One chunk's validated rows in Parquet files; `drop`: the source rows of its events whose key an
    earlier chunk had; `ts_range`: the earliest and latest `ts` of the events it keeps."""

    events: Path
    rejects: Path
    events_count: int
    rejects_count: int
    ts_range: tuple[datetime, datetime] | None = None
    drop: pl.Series | None = None

    def drop_repeats(self, rows: pl.Series) -> None:
        """Leave out the events at these source rows. The time range is then that of the events kept, as
        one piece computes it: a dropped repeat may lie outside it, and must not widen the window in
        which history is searched for twins."""
        self.drop = rows
        kept = pl.read_parquet(self.events, columns=["ts", "source_row"]).filter(
            ~pl.col("source_row").is_in(rows.implode())
        )
        self.ts_range = _time_range(kept)

    def events_frame(self) -> pl.DataFrame:
        events = pl.read_parquet(self.events)
        if self.drop is not None and self.drop.len():
            events = events.filter(~pl.col("source_row").is_in(self.drop.implode()))
        return events


@dataclass
class Spill:
    """A file's candidate events and rejects, chunk by chunk, in temporary Parquet files: the writer has
    DuckDB read them (again on every try of its transaction), so they never pass through Python."""

    folder: Path
    parts: list[SpilledPart] = field(default_factory=list)

    @property
    def events_count(self) -> int:
        return sum(p.events_count - (p.drop.len() if p.drop is not None else 0) for p in self.parts)

    @property
    def rejects_count(self) -> int:
        return sum(p.rejects_count for p in self.parts)

    def time_range(self) -> tuple[datetime, datetime] | None:
        """The earliest and latest `ts` of the events kept; None without any."""
        ranges = [p.ts_range for p in self.parts if p.ts_range is not None]
        if not ranges:
            return None
        return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)

    def event_files(self) -> list[str]:
        return [str(p.events) for p in self.parts if p.events_count]

    def reject_files(self) -> list[str]:
        return [str(p.rejects) for p in self.parts if p.rejects_count]

    def dropped_rows(self) -> pl.Series:
        """The source rows of the events that are later occurrences of an earlier chunk's key."""
        drops = [p.drop for p in self.parts if p.drop is not None]
        return pl.concat(drops) if drops else pl.Series("source_row", [], pl.Int64)

    def event_batches(self) -> Iterator[pl.DataFrame]:
        for part in self.parts:
            if part.events_count:
                yield part.events_frame()

    def reject_batches(self) -> Iterator[pl.DataFrame]:
        for part in self.parts:
            if part.rejects_count:
                yield pl.read_parquet(part.rejects)

    def remove(self) -> None:
        remove_folder(self.folder)


@dataclass
class Chunked:
    """What reading a file in chunks found: a layout failure (reason), no records (empty), or a spill."""

    spec: LayoutSpec | None = None
    columns: list[str] = field(default_factory=list)
    rows_total: int = 0
    duplicates: int = 0
    spill: Spill | None = None
    empty: bool = False


# The loader threads may hold several files; one big file at a time is read in chunks, so that memory
# stays that of one chunk (and the one read ahead) however many big files a run has.
_ONE_AT_A_TIME = threading.Lock()

# The layout of a file with these columns, or None when the file fails on them.
Decide = Callable[[list[str]], LayoutSpec | None]


def read_in_chunks(
    body: Body,
    start: int,
    base: str,
    file: FileVersion,
    limits: ValidationLimits,
    chunk_bytes: int,
    decide: Decide,
) -> Chunked:
    """Read and validate `body` (text from byte `start` on, format `base`: csv or jsonl) chunk by chunk.

    `decide(columns)` gives the layout for a file's columns, or None when the file fails on them (the
    caller then builds that failure from `Chunked.columns`). Raises WholeFileNeeded as described above.
    """
    spill = Spill(spill_folder())
    try:
        with _ONE_AT_A_TIME:
            found = _read(body, start, base, file, limits, chunk_bytes, decide, spill)
    except BaseException:
        spill.remove()
        raise
    if found.spill is None:
        spill.remove()
    return found


def _read(
    body: Body,
    start: int,
    base: str,
    file: FileVersion,
    limits: ValidationLimits,
    chunk_bytes: int,
    decide: Decide,
    spill: Spill,
) -> Chunked:
    tables = _read_ahead(
        _csv_tables(body, start, chunk_bytes) if base == "csv" else _json_tables(body, start, chunk_bytes)
    )
    result = Chunked()
    hashes: list[pl.Series] = []
    decided = failed = False
    known: list[str] = []  # JSON: the layout keys seen so far, in the order the file has them
    well_formed = False
    for table in tables:
        result.rows_total += table.height
        if base == "jsonl":
            well_formed |= bool(table.malformed.is_null().any())
            table = _align(table, known)
        if not decided:
            decided = True
            result.columns = list(table.columns)
            result.spec = decide(result.columns)
            failed = result.spec is None
            if failed and base != "csv":
                raise WholeFileNeeded  # which keys JSON records have may change with later chunks
        if failed or not table.height:
            continue  # a CSV whose header fails: only read on, to know that the file is readable
        assert result.spec is not None
        _validate_part(table, result, file, limits, spill, hashes)
    if not result.rows_total:
        result.empty = True
        return result
    if base == "jsonl":
        if not well_formed:
            raise WholeFileNeeded  # no record is a JSON object: the file fails, as the one piece says
        if decide(known) is not result.spec:  # keys of later chunks change the layout: one piece decides
            raise WholeFileNeeded
    if failed:
        return result
    assert result.spec is not None
    result.duplicates += _drop_repeats(spill, hashes, result.spec)
    result.spill = spill
    return result


def _validate_part(
    table: RecordTable,
    result: Chunked,
    file: FileVersion,
    limits: ValidationLimits,
    spill: Spill,
    hashes: list[pl.Series],
) -> None:
    assert result.spec is not None
    events, rejects, duplicates = validate_rows(table, result.spec, file, limits)
    result.duplicates += duplicates
    n = len(spill.parts)
    part = SpilledPart(
        spill.folder / f"events-{n}.parquet",
        spill.folder / f"rejects-{n}.parquet",
        events.height,
        rejects.height,
        _time_range(events),
    )
    events.write_parquet(part.events, compression=_SPILL_COMPRESSION, statistics=False)
    rejects.cast(REJECT_SCHEMA).write_parquet(part.rejects, compression=_SPILL_COMPRESSION, statistics=False)
    hashes.append(events.select(pl.struct(_key(result.spec)).hash()).to_series())
    spill.parts.append(part)


def _time_range(events: pl.DataFrame) -> tuple[datetime, datetime] | None:
    if events.is_empty():
        return None
    return events["ts"].min(), events["ts"].max()  # type: ignore[return-value]


def _key(spec: LayoutSpec) -> list[str]:
    """SPEC 4's key over the event columns."""
    if spec is STRIPE:
        return ["customer_id", "event_id"]
    return ["subscription_id", "ts", "event_id"]


def _drop_repeats(spill: Spill, hashes: list[pl.Series], spec: LayoutSpec) -> int:
    """Mark the events whose key an earlier chunk already had (each chunk is deduplicated on its own);
    returns how many. Repeated key hashes find the candidates, their exact keys decide."""
    if len(hashes) < 2:
        return 0
    every = pl.concat(hashes).sort()
    repeated = every.filter(every == every.shift(1)).unique()
    del every
    if not repeated.len():
        return 0
    key = _key(spec)
    suspects = []
    for i, (part, part_hashes) in enumerate(zip(spill.parts, hashes, strict=True)):
        rows = part_hashes.is_in(repeated.implode()).arg_true()
        if rows.len():
            keys = pl.read_parquet(part.events, columns=[*key, "source_row"])[rows]
            suspects.append(keys.with_columns(pl.lit(i).alias("__part")))
    found = pl.concat(suspects)
    later = found.filter(~pl.struct(key).is_first_distinct())
    for (i,), rows in later.group_by("__part"):
        spill.parts[int(i)].drop_repeats(rows["source_row"])  # type: ignore[call-overload]
    return later.height


def _read_ahead(tables: Iterator[RecordTable]) -> Iterator[RecordTable]:
    """`tables`, the next chunk read in a thread while the caller validates and spills this one: the two
    halves of the work (polars and DuckDB release the GIL) share the cores, for one more chunk in memory."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-chunk") as pool:
        pending = pool.submit(next, tables, None)
        while (table := pending.result()) is not None:
            pending = pool.submit(next, tables, None)
            yield table
            del table  # not held while the next one is awaited


# --- the chunks --------------------------------------------------------------------------------------


def _csv_tables(body: Body, start: int, chunk_bytes: int) -> Iterator[RecordTable]:
    """The CSV's records chunk by chunk; each chunk is read with the header before it, numbered on."""
    with open_body(body) as f:
        f.seek(start)
        head = f.read(chunk_bytes)
        end = _header_end(head)
        if end < 0:
            raise WholeFileNeeded  # no line end in a whole chunk: a file of one huge line
        header = head[:end]
        rows = lines = 0
        for chunk in _chunks(f, start + end, chunk_bytes, quoted=True):
            table = read_csv(header + chunk, row_offset=rows, line_offset=lines, whole=False)
            rows += table.body_records
            lines += chunk.count(b"\n")
            yield table


def _json_tables(body: Body, start: int, chunk_bytes: int) -> Iterator[RecordTable]:
    with open_body(body) as f:
        lines = 0
        for chunk in _chunks(f, start, chunk_bytes, quoted=False):
            if not lines and b"\n" not in chunk:
                raise WholeFileNeeded  # no LF at all: lone CRs may be its line ends (see check_text)
            yield read_json_lines(chunk, line_offset=lines, whole=False)
            lines += chunk.count(b"\n")


def _header_end(head: bytes) -> int:
    """Where the header record ends (after its LF, leading blank lines included), -1 when not in `head`."""
    at = 0
    while True:
        pos = head.find(b"\n", at)
        if pos < 0:
            return -1
        if head.count(b'"', 0, pos) % 2 == 0 and head[:pos].strip(b" \t\r\n"):
            return pos + 1
        at = pos + 1


def _chunks(f: BinaryIO, start: int, chunk_bytes: int, quoted: bool) -> Iterator[bytes]:
    """The text from `start` on in pieces of about `chunk_bytes`, each ending with a record's line end.

    Quoted (CSV): a line end ends a record when the text before it holds an even number of quotes, as in
    RFC 4180, where doubled quotes inside a quoted field keep the count even. Quoting that breaks that
    rule makes polars fall back to Python's csv for the chunk, which then asks for the whole file.
    """
    f.seek(start)
    carry = b""
    while True:
        more = f.read(chunk_bytes - len(carry) if len(carry) < chunk_bytes else chunk_bytes)
        buf = carry + more if carry else more
        if not more:
            if buf:
                yield buf
            return
        cut = _cut(buf, quoted)
        while cut < 0:  # no record ends in the piece: take more
            extra = f.read(chunk_bytes)
            if not extra:
                yield buf
                return
            buf += extra
            cut = _cut(buf, quoted)
        carry = buf[cut:]
        yield buf[:cut]


def _cut(buf: bytes, quoted: bool) -> int:
    """The end of the last whole record in `buf` (which starts outside quotes), or -1."""
    pos = buf.rfind(b"\n")
    if not quoted or pos < 0:
        return pos + 1 if pos >= 0 else -1
    end = len(buf)
    odd = buf.count(b'"') % 2
    while pos >= 0:
        odd ^= buf.count(b'"', pos, end) % 2  # the quotes before `pos` only
        if not odd:
            return pos + 1
        end = pos
        pos = buf.rfind(b"\n", 0, pos)
    return -1


def _align(table: RecordTable, known: list[str]) -> RecordTable:
    """A JSON chunk's layout keys in the file's order (keys seen in earlier chunks first, as one piece
    would order them), plus null columns for the keys it lacks; `known` grows with its new keys."""
    own = [c for c in table.columns if is_layout_key(c)]
    known += [c for c in own if c not in known]
    fields = table.fields.with_columns(
        pl.lit(None, pl.String).alias(c) for c in known if c not in table.fields.columns
    )
    ordered = list(known)
    fields = fields.select([*ordered, *(c for c in fields.columns if c not in ordered)])
    return RecordTable(
        fields=fields,
        rows=table.rows,
        malformed=table.malformed,
        raw_text=table.raw_text,
        columns=ordered,
        body_records=table.body_records,
    )
