"""JSON Lines and JSON array files -> RecordTable: every record is parsed alone, with DuckDB's JSON functions.

A record's values are kept as their JSON text and turned into plain text here, so a key that is a number in
one record and an object or a string in the next never fails the file: validation judges each record.
"""

from __future__ import annotations

import json
import re
import uuid

import duckdb
import polars as pl

from usage_pipeline.core.ingest.layouts import CHARGEBEE, PAYLOAD_PREFIX, STRIPE
from usage_pipeline.core.ingest.records import RecordTable, Unreadable, nulls, physical_lines, utf8_error

__all__ = ["is_layout_key", "read_json_array", "read_json_lines"]

PAYLOAD = "payload"
# The keys read from every record: both layouts' fields (and the payload_* keys a file has).
_LAYOUT_KEYS: tuple[str, ...] = tuple(dict.fromkeys((*STRIPE.fields, *CHARGEBEE.fields)))
_TIMESTAMP_KEYS = frozenset({STRIPE.timestamp, CHARGEBEE.timestamp})
# DuckDB's parser accepts these, JSON does not: a record holding one gets a strict second look.
_LENIENT_MARKS = [",}", ",]", "NaN", "Infinity"]
_KINDS = {"[": "an array", '"': "a string", "t": "a boolean", "f": "a boolean", "n": "null"}
_SNIPPET_CHARS = 80
_SLICE_RECORDS = 1_000_000
_JSON_SPACE = re.compile(rb"[ \t\r\n]*")


def read_json_lines(data: bytes, *, line_offset: int = 0, whole: bool = True) -> RecordTable:
    """One record per line; blank lines are skipped and do not count, other lines keep their number.

    A chunk of a big file (`whole` False) is numbered from line `line_offset` + 1, and may have no JSON
    object at all (only the whole file then fails).
    """
    lines = physical_lines(data)
    numbers = pl.int_range(line_offset + 1, line_offset + lines.len() + 1, eager=True, dtype=pl.Int64)
    present = lines.is_not_null()
    return _records(lines.filter(present), numbers.filter(present), "line", whole)


def is_layout_key(key: str) -> bool:
    """A key that validation reads: a field of either layout or a payload_* key."""
    return key in _LAYOUT_KEYS or key.startswith(PAYLOAD_PREFIX)


def read_json_array(data: bytes) -> RecordTable:
    """One record per element of the top-level array; the file must be that array as a whole."""
    start = _JSON_SPACE.match(data).end()  # type: ignore[union-attr]
    first = data[start : start + 1]
    if first == b"{":
        if re.fullmatch(rb"\{[ \t\r\n]*\}[ \t\r\n]*", data[start:]):
            return _records(pl.Series([], dtype=pl.String), pl.Series([], dtype=pl.Int64), "element")
        raise Unreadable("The file holds one JSON object; a .json usage file must be an array of objects.")
    if first != b"[":
        shown = data[start : start + 20].decode("utf-8", "replace")
        raise Unreadable(
            f"The file is not a JSON array: it starts with {shown!r} at byte {start:,}; a .json usage file "
            "must be an array of objects."
        )
    end = len(data)
    while end and data[end - 1 : end] in (b" ", b"\t", b"\r", b"\n"):
        end -= 1
    if data[end - 1 : end] != b"]":  # DuckDB's reader takes a cut-off array for a whole one
        raise Unreadable(
            _array_error(data) or "The file is not a valid JSON array: it does not end with ']'."
        )
    elements = _array_elements(data)
    numbers = pl.int_range(1, elements.len() + 1, eager=True, dtype=pl.Int64)
    return _records(elements, numbers, "element")


def _array_elements(data: bytes) -> pl.Series:
    """The text of each element of the array, as written, by DuckDB's streaming reader."""
    import fsspec  # only needed here: DuckDB reads the bytes through fsspec's in-memory filesystem

    memory = fsspec.filesystem("memory")
    path = f"/usage-pipeline/{uuid.uuid4().hex}.json"
    memory.pipe_file(path, data)
    try:
        with duckdb.connect() as con:
            con.register_filesystem(memory)
            query = "SELECT json FROM read_json_objects($path, format = 'array', maximum_object_size = $size)"
            frame = con.sql(
                query, params={"path": f"memory://{path}", "size": min(len(data) + 1, 2**32 - 1)}
            ).pl()
    except duckdb.Error as exc:
        raise Unreadable(_array_error(data) or _first_line(str(exc))) from None
    finally:
        memory.rm_file(path)
    return frame.to_series().cast(pl.String)


def _array_error(data: bytes) -> str | None:
    """Where the array stops being JSON: walked element by element (only for a file that failed)."""
    problem = utf8_error(data)
    if problem is not None:
        return problem
    text = data.decode("utf-8")
    decoder = json.JSONDecoder()
    space = re.compile(r"[ \t\r\n]*")
    at = space.match(text, text.index("[") + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", at):
        at += 1
    else:
        while True:
            try:
                _, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError as exc:
                return _where(text, exc.pos, f"not valid JSON ({exc.msg})")
            at = space.match(text, at).end()  # type: ignore[union-attr]
            if text.startswith(",", at):
                at = space.match(text, at + 1).end()  # type: ignore[union-attr]
            elif text.startswith("]", at):
                at += 1
                break
            else:
                return _where(text, at, "expected ',' or ']' between array elements")
    at = space.match(text, at).end()  # type: ignore[union-attr]
    if at < len(text):
        return _where(text, at, "there is more after the end of the array")
    return None


def _where(text: str, at: int, what: str) -> str:
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    offset = len(text[:at].encode())
    near = f"near {text[at : at + 20]!r}" if at < len(text) else "at the end of the file"
    where = f"line {line}, column {column} (byte {offset:,})"
    return f"The file is not a valid JSON array: {what} at {where}, {near}."


def _first_line(message: str) -> str:
    return "The file is not a valid JSON array: " + message.splitlines()[0][:300]


def _records(texts: pl.Series, numbers: pl.Series, unit: str, whole: bool = True) -> RecordTable:
    """Records from their JSON texts: the layout keys as text columns, the rest judged malformed or not."""
    with duckdb.connect() as con:
        _register(con, "records", texts)
        keys = list(_LAYOUT_KEYS)
        # Stripe's fields may be flat payload_* keys or keys of a nested "payload" object: when the text
        # mentions them, find which ones the file has, so that one parse per record reads them all.
        if texts.str.contains('"payload_', literal=True).any():
            keys += [k for k in _keys(con) if k.startswith(PAYLOAD_PREFIX) and k not in keys]
        nested = _keys(con, [PAYLOAD]) if texts.str.contains(f'"{PAYLOAD}"', literal=True).any() else []
        invalid, columns = _extract(con, texts, [[k] for k in keys] + [[PAYLOAD, k] for k in nested])
        values = pl.DataFrame(dict(zip(keys, columns, strict=False)))
        for key, column in zip(nested, columns[len(keys) :], strict=True):
            name = PAYLOAD_PREFIX + key  # a flat payload_* value wins over a nested one
            values = values.with_columns(
                values[name].fill_null(column) if name in values.columns else column.alias(name)
            )
        del columns
        # A line of spaces is a blank line, and `{}` a record with nothing in it: both are skipped.
        maybe = ((texts.str.len_bytes() <= 16).fill_null(False) | invalid).arg_true()
        empty = texts.gather(maybe).str.contains(r"^\s*(?:\{\s*\})?\s*$").fill_null(False)
        blank = pl.repeat(False, texts.len(), eager=True).scatter(maybe, empty)
        if blank.any():
            texts, numbers, invalid, values = (x.filter(~blank) for x in (texts, numbers, invalid, values))
            _register(con, "records", texts)
        malformed = _malformed(texts, numbers, invalid, unit)
        well_formed = malformed.is_null()
        if whole and texts.len() and not well_formed.any():
            raise Unreadable(f"No record of the file is a JSON object: {malformed[0]}.")
        found = values.select((pl.all().is_not_null() & pl.lit(well_formed)).any()).row(0, named=True)
        values = values.select(k for k, yes in found.items() if yes)  # keys no record has: not columns
        values = _with_integral_timestamps(con, values)
        present = values.columns
        if well_formed.any() and not any(is_layout_key(k) for k in present):
            present = _keys(con)  # no layout key at all: name the keys the file has instead
    return RecordTable(fields=values, rows=numbers, malformed=malformed, raw_text=texts, columns=present)


def _register(con: duckdb.DuckDBPyConnection, table: str, texts: pl.Series) -> None:
    """`texts` as table `table` (t: the JSON text, n: its position) for the queries below."""
    frame = pl.DataFrame([texts.alias("t"), pl.int_range(texts.len(), eager=True).alias("n")])
    # Plain Arrow strings: DuckDB 1.5.5 cannot filter Arrow string views it scans (array_filter has no
    # kernel for string_view), so the texts are handed over in the oldest layout.
    con.register(table, frame.to_arrow(compat_level=pl.CompatLevel.oldest()))


def _keys(con: duckdb.DuckDBPyConnection, path: list[str] | None = None) -> list[str]:
    """The distinct keys of the objects in the records (at `path` in them), in order of first appearance."""
    keys = f"json_keys(t, {_pointer(path)})" if path else "json_keys(t)"
    query = (
        "SELECT k FROM ("
        "  SELECT unnest(keys) AS k, generate_subscripts(keys, 1) AS pos, n"
        f"  FROM (SELECT try({keys}) AS keys, n FROM records)"
        ") WHERE k IS NOT NULL GROUP BY k ORDER BY min(n * 1000000 + pos)"
    )
    return [k for (k,) in con.sql(query).fetchall()]


def _pointer(path: list[str]) -> str:
    """The keys as an SQL literal of a JSON pointer (RFC 6901): no JSONPath quoting rules to get wrong."""
    pointer = "".join("/" + key.replace("~", "~0").replace("/", "~1") for key in path)
    return "'" + pointer.replace("'", "''") + "'"


def _extract(
    con: duckdb.DuckDBPyConnection, texts: pl.Series, paths: list[list[str]]
) -> tuple[pl.Series, list[pl.Series]]:
    """(invalid, values): whether each text is not JSON at all, and the value at each path as text.

    One parse per record gives every path: a string unquoted, a number or a boolean as written, an object or
    an array as compact JSON, null when absent or null. Columns are named by position in SQL, so keys that
    differ only in case stay apart. Done a slice of records at a time, which bounds the memory DuckDB and
    the conversion to polars take beyond the result.
    """
    pointers = ", ".join(_pointer(path) for path in paths)
    picks = ", ".join(f"v[{i + 1}] AS c{i}" for i in range(len(paths)))
    inner = f"SELECT try(json_extract_string(t, [{pointers}])) AS v FROM part"
    query = f"SELECT v IS NULL AS invalid, {picks} FROM ({inner})"
    parts = []
    for start in range(0, max(texts.len(), 1), _SLICE_RECORDS):
        _register(con, "part", texts.slice(start, _SLICE_RECORDS))
        part = pl.from_arrow(con.sql(query).to_arrow_table())
        assert isinstance(part, pl.DataFrame)
        # A key the slice does not have (the other layout's) costs nothing as a Null column.
        parts.append(
            part.with_columns(
                pl.lit(None).alias(c)
                for c in part.columns
                if part[c].null_count() == part.height and c != "invalid"
            )
        )
    frame = pl.concat(parts, how="vertical_relaxed")
    return frame["invalid"], [frame[f"c{i}"] for i in range(len(paths))]  # String, or Null when absent


def _malformed(texts: pl.Series, numbers: pl.Series, invalid: pl.Series, unit: str) -> pl.Series:
    """Why each record is not a JSON object (null when it is one): not JSON at all, or another JSON value."""
    t = pl.col("t")
    looks = pl.DataFrame([texts.alias("t")]).select(
        t.str.starts_with("{").fill_null(False).alias("object"),
        t.str.contains_any(_LENIENT_MARKS).fill_null(False).alias("lenient"),
    )
    is_object, lenient = looks["object"], looks["lenient"]
    spaced = (~is_object).arg_true()  # `  {…}`: whitespace before the object is still JSON
    if spaced.len():
        is_object = is_object.scatter(spaced, texts.gather(spaced).str.contains(r"^\s+\{").fill_null(False))
    # A second, strict look at the records that DuckDB's lenient parser let through with a JSON extension.
    lenient &= is_object & ~invalid
    if lenient.any():
        suspects = lenient.arg_true()
        invalid = invalid.scatter(suspects, texts.gather(suspects).str.json_path_match("$").is_null())
    messages = nulls(texts.len())
    bad = (invalid | ~is_object).arg_true()
    if not bad.len():
        return messages
    frame = pl.DataFrame(
        [x.gather(bad) for x in (texts.alias("t"), numbers.alias("n"), invalid.alias("invalid"))]
    )
    text = pl.col("t").str.strip_chars()
    first = text.str.slice(0, 1)
    kind = (
        pl.when(first.is_in(list(_KINDS)))
        .then(first.replace_strict(_KINDS, default=None))
        .when(text.str.contains(r"^-?[0-9]"))
        .then(pl.lit("a number"))
    )
    where = pl.format(f"{unit} {{}}", pl.col("n"))
    long = text.str.len_chars() > _SNIPPET_CHARS
    snippet = pl.when(long).then(text.str.slice(0, _SNIPPET_CHARS - 1) + "…").otherwise(text)
    message = (
        pl.when(~pl.col("invalid") & kind.is_not_null())
        .then(pl.format("{} is {}, not a JSON object", where, kind))
        .otherwise(pl.format("{} is not valid JSON: {}", where, snippet))
    )
    return messages.scatter(bad, frame.select(message).to_series())


def _with_integral_timestamps(con: duckdb.DuckDBPyConnection, values: pl.DataFrame) -> pl.DataFrame:
    """A timestamp that is a JSON number with an integral value (1772366400.0) is that integer.

    JSON has one number type; in a string ("1772366400.0") the text stays and validation rejects it.
    """
    for key in sorted(_TIMESTAMP_KEYS & set(values.columns)):
        text = values[key]
        rows = text.str.contains("[.eE]").fill_null(False).arg_true()
        number = text.gather(rows).cast(pl.Float64, strict=False)
        integral = ((number == number.floor()) & (number.abs() < 2**53)).fill_null(False)
        rows, number = rows.filter(integral), number.filter(integral)
        if not rows.len():
            continue
        # Only the few records whose timestamp reads as an integral decimal: was it a number or a string?
        con.register("candidates", pl.DataFrame({"n": rows.cast(pl.Int64)}))
        query = (
            f"SELECT json_type(r.t, {_pointer([key])}) <> 'VARCHAR' AS is_number "
            "FROM candidates c JOIN records r USING (n) ORDER BY n"
        )
        is_number = con.sql(query).pl().to_series()
        rows, number = rows.filter(is_number), number.filter(is_number)
        values = values.with_columns(text.scatter(rows, number.cast(pl.Int64).cast(pl.String)))
    return values
