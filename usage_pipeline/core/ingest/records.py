"""A file's decompressed bytes -> its records as text (RecordTable), or why the file cannot be read."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

import polars as pl

__all__ = [
    "RecordTable",
    "Unreadable",
    "WholeFileNeeded",
    "check_head",
    "check_text",
    "nulls",
    "physical_lines",
    "utf8_error",
]

UTF8_BOM = b"\xef\xbb\xbf"
# Longest first: the UTF-32 little-endian mark starts with the UTF-16 one.
_OTHER_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
    (b"\xff\xfe", "UTF-16 (little-endian)"),
    (b"\xfe\xff", "UTF-16 (big-endian)"),
)
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive"),
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"PAR1", "a Parquet file"),
)
_SNIFF_BYTES = 4096
# A byte the line reader may use as its (never met) field separator: the first one the file does not hold.
_SEPARATORS = [chr(c) for c in (0x1F, 0x1E, 0x1D, 0x1C, *range(0x01, 0x09), 0x0B, 0x0C, *range(0x0E, 0x1C))]


class Unreadable(Exception):
    """The file cannot be read as a whole; the message says why and where."""


class WholeFileNeeded(Exception):
    """A chunk of a big file cannot be judged alone (odd quoting, a bad byte): read the file in one piece."""


@dataclass
class RecordTable:
    """A file's records, one row per record that is not blank, in file order.

    `fields` holds String columns named by the file's columns (CSV) or keys (JSON); a malformed record has
    nulls there and its message in `malformed`. `raw_text` is the record as written where the reader kept
    it (JSON: every record; CSV: the malformed ones), else null: a CSV row is then shown as a JSON object
    of its columns. `columns` are the columns the file has, for layout detection.
    """

    fields: pl.DataFrame
    rows: pl.Series  # Int64: the record's 1-based number in the file (source_row)
    malformed: pl.Series  # String: why the record is malformed, null when it is not
    raw_text: pl.Series  # String
    columns: list[str]
    # CSV: the records polars read after the header, blank ones included (numbering goes on from there).
    body_records: int = 0

    @property
    def height(self) -> int:
        return self.rows.len()


def check_text(data: bytes) -> bytes:
    """`data` without its UTF-8 byte-order mark; Unreadable when it is another encoding or a binary format.

    Old Mac line ends (a lone CR, no LF anywhere) become LF: readers split lines at LF only.
    """
    data = data[check_head(data) :]
    if b"\n" not in data and b"\r" in data:
        data = data.replace(b"\r", b"\n")
    return data


def check_head(data: bytes) -> int:
    """How many bytes to skip (a UTF-8 byte-order mark); Unreadable when the first bytes show another
    encoding or a binary format. Only the first few KiB of `data` are read."""
    for magic, name in _OTHER_BOMS:
        if data.startswith(magic):
            raise Unreadable(
                f"The file starts with a {name} byte-order mark: it is {name.split(' ')[0]}-encoded; "
                "usage files must be UTF-8."
            )
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            raise Unreadable(
                f"The file is {name} (it starts with bytes {magic.hex(' ')}); only gzip is read."
            )
    skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    head = data[skip : skip + _SNIFF_BYTES]
    nuls = head.count(0)
    if nuls * 4 >= len(head) > 0:
        raise Unreadable(
            f"{nuls} of the first {len(head)} bytes are NUL: the file looks UTF-16 or UTF-32 encoded "
            "(without a byte-order mark); usage files must be UTF-8."
        )
    return skip


def utf8_error(data: bytes) -> str | None:
    """Where `data` stops being UTF-8, or None when it is valid."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    step = 1 << 20
    for start in range(0, len(data), step):
        pending = len(decoder.getstate()[0])  # the bytes of a character cut by the previous step
        try:
            decoder.decode(data[start : start + step], final=start + step >= len(data))
        except UnicodeDecodeError as exc:
            offset = start - pending + exc.start
            line = data.count(b"\n", 0, offset) + 1
            bad = data[offset : offset + 4].hex(" ")
            return f"The file is not valid UTF-8: byte {offset:,} (line {line}) starts {bad!r}."
    return None


def physical_lines(data: bytes) -> pl.Series:
    """The file's lines, split at LF (a CR before it dropped), as String; an empty line is null."""
    separator = next((s for s in _SEPARATORS if s.encode() not in data), None)
    if separator is None:  # a file that holds every control byte is not text; split it the slow way
        parts = data.split(b"\n")
        if parts and not parts[-1]:
            parts.pop()
        lines = pl.Series("line", parts, dtype=pl.Binary).cast(pl.String)
        return lines.str.strip_suffix("\r").replace("", None)
    frame = pl.read_csv(
        data,
        has_header=False,
        separator=separator,
        quote_char=None,
        infer_schema=False,
        new_columns=["line"],
        raise_if_empty=False,
    )
    return frame.to_series() if frame.width else pl.Series("line", [], dtype=pl.String)


def nulls(n: int) -> pl.Series:
    """A new String column of n nulls (Series.scatter writes in place: never share one)."""
    return pl.repeat(None, n, dtype=pl.String, eager=True)
