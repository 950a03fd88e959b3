"""Per-row validation (SPEC 3) and in-file deduplication (SPEC 4), as vectorised polars expressions."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from usage_pipeline.core.ingest.layouts import (
    STRIPE,
    STRIPE_CUSTOMER,
    LayoutSpec,
    encode_members,
    json_object,
    layout_columns,
    payload_members,
)
from usage_pipeline.core.ingest.model import EVENT_SCHEMA, ROW_ERROR_CODES, FileVersion, ValidationLimits
from usage_pipeline.core.ingest.records import RecordTable
from usage_pipeline.core.ingest.rejects import reject_rows

MAX_IDENTIFIER_CHARS = 100
MAX_SIGNIFICANT_DIGITS = 15
MAX_PROPERTIES_BYTES = 1024
# A Stripe timestamp at or above this looks like milliseconds; a Chargebee one below it looks like seconds.
UNIT_THRESHOLD = 10**11
# The instants a datetime can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, in ms since the epoch.
_MIN_MS = -62_135_596_800_000
_MAX_MS = 253_402_300_799_999
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_INTEGER = r"^[+-]?\d+$"
# More significant digits than allowed: from the first non-zero digit of the mantissa to a later non-zero
# one (leading and trailing zeros are not significant). Only read for text that is a decimal.
_TOO_PRECISE = rf"^\s*[+-]?[0.]*[1-9](?:\.?\d){{{MAX_SIGNIFICANT_DIGITS - 1},}}\.?[1-9]"

# Working columns, next to the layout's own.
_ROW = "__row"
_MALFORMED = "__malformed"
_TS = "__ts"
_TS_MS = "__ts_ms"
_PROPS = "__properties"
_PROPS_GAP = "__properties_gap"
_JSON_OK = "__json_ok"
_VALUE_BAD = "__value_bad"
_TOO_PRECISE_COL = "__too_precise"
_ID_LONG = "__id_long"
_RULE = "__rule"
_EVENT_ID = "__event_id"
_KEY_HASH = "__key_hash"
_KEEP = "__keep"
_ARRIVED_MS = "__arrived_ms"  # the file's arrival, ms since the epoch: the rules are the same for every file


def _present_col(name: str) -> str:
    return f"__present_{name}"


@dataclass(frozen=True)
class _Rule:
    code: str
    broken: pl.Expr  # true where the row breaks the rule, over the working columns
    message: pl.Expr  # evaluated on rejected rows only


def validate_rows(
    table: RecordTable, spec: LayoutSpec, file: FileVersion, limits: ValidationLimits
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(events, rejects, duplicates dropped) for a file's records in the layout `spec`.

    Every record of `table` is judged alone: malformed ones are rejected first (SPEC 3), the others by the
    layout's rules; rejected records are reported with their raw text.
    """
    text = table.fields.select(layout_columns(spec, table.columns))
    # The costly string checks are independent columns of one context, so polars runs them in parallel.
    numbered = text.hstack([table.rows.cast(pl.Int64).alias(_ROW), table.malformed.alias(_MALFORMED)])
    checked = numbered.lazy().with_columns(_checks(spec, tuple(text.columns))).collect()
    checked = checked.with_columns(_fixes(spec, checked))
    del numbered
    # Built once per layout, columns and limits (building polars expressions costs more than running them
    # on a small file); the file's arrival is a column they read.
    order = tuple(ROW_ERROR_CODES)
    rules = _rules(spec, tuple(text.columns), limits.max_event_age, limits.max_future_skew, order)
    # The rules from the first that reads the properties on are applied late: the properties' costly JSON
    # is built only for the rows no earlier rule rejects (in SPEC order the properties rules come last).
    needs_properties = [bool({_PROPS, _JSON_OK} & set(r.broken.meta.root_names())) for r in rules]
    first_late = needs_properties.index(True) if any(needs_properties) else len(rules)
    late = list(range(first_late, len(rules)))
    key = [STRIPE_CUSTOMER, _EVENT_ID] if spec is STRIPE else ["subscription_id", _TS_MS, _EVENT_ID]
    prepared = (
        checked.lazy()
        .with_columns(
            _timestamp_ms(spec),
            _event_id(spec, checked, file).alias(_EVENT_ID),
            pl.lit(_arrived_ms(file), pl.Int64).alias(_ARRIVED_MS),
        )
        .with_columns(
            _first_rule(rules, list(range(first_late))),
            pl.struct(key).hash().alias(_KEY_HASH),
        )
        .collect()
    )
    del checked
    prepared = _with_properties(spec, prepared, text.columns)
    prepared = prepared.with_columns(pl.coalesce(pl.col(_RULE), _first_rule(rules, late)).alias(_RULE))
    rejected = prepared[_RULE].is_not_null()
    keep = _first_occurrences(prepared, key, ~rejected)
    events = _events(prepared.with_columns(keep.alias(_KEEP)).lazy().filter(_KEEP), spec, file)
    del keep
    codes, messages = [r.code for r in rules], [r.message for r in rules]
    rejects = reject_rows(prepared, rejected.arg_true(), table, _RULE, codes, messages, _ROW, file)
    return events, rejects, prepared.height - rejects.height - events.height


def _first_rule(rules: list[_Rule], which: list[int]) -> pl.Expr:
    """The index of the first of the rules `which` (in SPEC order) that the row breaks, else null."""
    return pl.coalesce(
        pl.lit(None, pl.Int8), *(pl.when(rules[i].broken).then(pl.lit(i, pl.Int8)) for i in which)
    ).alias(_RULE)


def _with_properties(spec: LayoutSpec, prepared: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """The properties as compact JSON (and, Chargebee, whether they are an object) for the open rows.

    When most rows are already rejected, only the open ones are computed (the others get nulls): a file of
    millions of bad rows does not pay for their JSON. When most are open, gathering and scattering them
    would cost more than computing the few rejected ones too, whose values are then never read.
    """
    exprs = _property_checks(spec, tuple(columns))
    names = [e.meta.output_name() for e in exprs]
    open_rows = prepared[_RULE].is_null()
    if open_rows.sum() * 2 >= prepared.height:
        found = prepared.lazy().with_columns(exprs).select(names).collect()  # literals broadcast
    else:
        rows = open_rows.arg_true()
        needed = [_ROW, *(n for e in exprs for n in e.meta.root_names())]
        some = _gather(prepared, needed, rows).with_columns(exprs).select(names)
        found = pl.DataFrame(
            [
                pl.repeat(None, prepared.height, dtype=c.dtype, eager=True).alias(c.name).scatter(rows, c)
                for c in some
            ]
        )
    if spec is STRIPE:
        # polars' encoder writes null for an empty cell: those rows are rebuilt without the key.
        gaps = found[_PROPS_GAP].fill_null(False).arg_true()
        members = json_object(payload_members(columns))
        props = _patch(prepared.hstack([found[_PROPS]]), _PROPS, gaps, members)
        found = found.with_columns(props).drop(_PROPS_GAP)
    return prepared.hstack(found)


@functools.cache
def _checks(spec: LayoutSpec, columns: tuple[str, ...]) -> list[pl.Expr]:
    """Working columns over every row; the values that need a second look are fixed by _fixes."""
    exprs = [
        # An integer epoch is exactly what this cast accepts (sign and ASCII digits); overflow gives null too.
        pl.col(spec.timestamp).cast(pl.Int64, strict=False).alias(_TS),
    ]
    exprs += [_present(name).alias(_present_col(name)) for name in spec.required]
    if spec is not STRIPE:
        return exprs
    if "identifier" in columns:
        exprs += [
            _present("identifier").alias(_present_col("identifier")),
            # Bytes first (cheap); _fixes counts the characters where the bytes are over the limit.
            (pl.col("identifier").str.len_bytes() > MAX_IDENTIFIER_CHARS).alias(_ID_LONG),
        ]
    if "payload_value" in columns:
        value = pl.col("payload_value")
        exprs += [
            # polars' float parser accepts exactly the decimal grammar, and nan/inf, which are not finite.
            (value.is_not_null() & (~value.cast(pl.Float64, strict=False).is_finite()).fill_null(True)).alias(
                _VALUE_BAD
            ),
            value.str.contains(_TOO_PRECISE).alias(_TOO_PRECISE_COL),
        ]
    return exprs


@functools.cache
def _property_checks(spec: LayoutSpec, columns: tuple[str, ...]) -> list[pl.Expr]:
    """The properties as compact JSON, and (Chargebee) whether they are a JSON object."""
    if spec is not STRIPE:
        # One strict parse per row both validates and compacts: polars' JSONPath "$" gives the document
        # back re-serialised (compact, key order kept, numbers in their shortest form), or null when the
        # text is not JSON. An object is what starts with "{" (a JSON string holding "{…}" does not).
        properties = pl.col("properties")
        parsed = properties.str.json_path_match("$")
        object_text = properties.str.strip_chars_start().str.starts_with("{")
        is_object = (parsed.is_not_null() & object_text).fill_null(False)
        return [parsed.alias(_PROPS), is_object.alias(_JSON_OK)]
    members = payload_members(list(columns))
    return [
        encode_members(members).alias(_PROPS),
        pl.any_horizontal(pl.lit(False), *(value.is_null() for _, value in members)).alias(_PROPS_GAP),
    ]


def _fixes(spec: LayoutSpec, checked: pl.DataFrame) -> list[pl.Series]:
    """Second looks at the few rows the fast path got wrong: padded numbers, long identifiers, values."""

    ts_rows = (checked[_TS].is_null() & checked[spec.timestamp].is_not_null()).arg_true()
    trimmed = pl.col(spec.timestamp).str.strip_chars().cast(pl.Int64, strict=False)
    fixes = [_patch(checked, _TS, ts_rows, trimmed)]
    if spec is not STRIPE:
        return fixes
    if _ID_LONG in checked.columns:
        chars = pl.col("identifier").str.len_chars() > MAX_IDENTIFIER_CHARS
        fixes.append(_patch(checked, _ID_LONG, checked[_ID_LONG].arg_true(), chars))
    if _VALUE_BAD in checked.columns:
        # Padded numbers get a second chance; blank is an absent value (a meter may read another key).
        value = pl.col("payload_value").str.strip_chars()
        bad = (value != "") & ~value.cast(pl.Float64, strict=False).is_finite().fill_null(False)
        fixes.append(_patch(checked, _VALUE_BAD, checked[_VALUE_BAD].arg_true(), bad))
    return fixes


def _patch(frame: pl.DataFrame, column: str, rows: pl.Series, expr: pl.Expr) -> pl.Series:
    """`frame[column]` with `expr`, evaluated on those `rows` (indices) only, written over them."""
    if not rows.len():
        return frame[column]
    return frame[column].scatter(rows, _gather(frame, expr.meta.root_names(), rows).select(expr).to_series())


def _gather(frame: pl.DataFrame, columns: list[str], rows: pl.Series) -> pl.DataFrame:
    # Column by column: a frame-level select would first realign the chunks of every column.
    return pl.DataFrame([frame[name].gather(rows) for name in dict.fromkeys(columns)])


def _first_occurrences(prepared: pl.DataFrame, key: list[str], eligible: pl.Series) -> pl.Series:
    """True for the eligible rows that are the first eligible row with their key, in row order.

    Looking for repeated hashes of the key is several times faster than distinct on the strings; only the
    rows whose hash repeats are then compared exactly, so a hash collision cannot drop an event.
    """
    hashes = prepared[_KEY_HASH]
    ordered = hashes.filter(eligible).sort()
    repeated = ordered.filter(ordered == ordered.shift(1)).unique()
    if not repeated.len():
        return eligible
    suspects = (eligible & hashes.is_in(repeated.implode())).arg_true()
    exact = _gather(prepared, key, suspects).select(pl.struct(pl.all()).is_first_distinct()).to_series()
    return eligible.scatter(suspects, exact)


def _timestamp_ms(spec: LayoutSpec) -> pl.Expr:
    # Clipped so that rows rejected for their unit or range cannot overflow the arithmetic.
    if spec is STRIPE:
        return (pl.col(_TS).clip(_MIN_MS // 1000, UNIT_THRESHOLD) * 1000).alias(_TS_MS)
    return pl.col(_TS).clip(UNIT_THRESHOLD, _MAX_MS).alias(_TS_MS)


def _ms(duration: timedelta) -> int:
    return duration // timedelta(milliseconds=1)  # exact, where float seconds could be off by one


def _present(name: str) -> pl.Expr:
    """Not null and not only whitespace: an empty cell counts as an absent field."""
    return pl.col(name).str.contains(r"\S").fill_null(False)


def _event_id(spec: LayoutSpec, checked: pl.DataFrame, file: FileVersion) -> pl.Expr:
    if spec is not STRIPE:
        return pl.col("deduplication_id")
    # Derived from (file key, row) so that re-ingesting the same file gives the same ids and dedupes.
    derived = pl.format("{}#{}", pl.lit(file.key), pl.col(_ROW))
    present = _present_col("identifier")
    if present not in checked.columns:
        return derived
    if checked[present].all():  # the usual file: every row has its identifier, nothing to derive
        return pl.col("identifier")
    return pl.when(pl.col(present)).then(pl.col("identifier")).otherwise(derived)


def _arrived_ms(file: FileVersion) -> int:
    return _ms(file.last_modified.replace(tzinfo=file.last_modified.tzinfo or UTC) - _EPOCH)


@functools.lru_cache(maxsize=64)
def _rules(
    spec: LayoutSpec,
    columns: tuple[str, ...],
    max_event_age: timedelta,
    max_future_skew: timedelta,
    order: tuple[str, ...],
) -> list[_Rule]:
    """The row checks in the precedence order of ROW_ERROR_CODES (SPEC 3): a rejected row gets the first
    rule it breaks; the rules of one code keep the order they are listed in here."""
    field = spec.timestamp
    ts_text = pl.col(field).str.strip_chars()
    ts, ts_ms = pl.col(_TS), pl.col(_TS_MS)
    arrived_ms = pl.col(_ARRIVED_MS)
    age_ms, skew_ms = _ms(max_event_age), _ms(max_future_skew)
    iso_time = ts_ms.cast(pl.Datetime("ms")).dt.to_string("%Y-%m-%dT%H:%M:%S%.fZ")
    unit, other_unit = ("seconds", "milliseconds") if spec is STRIPE else ("milliseconds", "seconds")

    rules = [_Rule("malformed_record", pl.col(_MALFORMED).is_not_null(), pl.col(_MALFORMED))]
    rules += [
        _Rule("missing_required_field", ~pl.col(_present_col(name)), pl.lit(f"{name} is missing or empty"))
        for name in spec.required
    ]
    rules.append(
        _Rule(
            "invalid_timestamp",
            ts.is_null(),
            pl.when(ts_text.str.contains(_INTEGER))
            .then(pl.format(f"{field} {{}} is outside the range of a 64-bit integer", ts_text))
            .otherwise(
                pl.format(
                    f'{field} "{{}}" is not an integer number of {unit} since the Unix epoch',
                    _snippet(ts_text),
                )
            ),
        )
    )
    wrong_unit = pl.format(f"{field} {{}} looks like {other_unit}; the {spec.label} layout wants {unit}", ts)
    out_of_range = pl.format(f"{field} {{}} is outside the dates a timestamp can hold (years 1 to 9999)", ts)
    if spec is STRIPE:
        rules += [
            _Rule("invalid_timestamp", ts >= UNIT_THRESHOLD, wrong_unit),
            _Rule("invalid_timestamp", ts < _MIN_MS // 1000, out_of_range),
        ]
    else:
        rules += [
            _Rule("invalid_timestamp", ts < UNIT_THRESHOLD, wrong_unit),
            _Rule("invalid_timestamp", ts > _MAX_MS, out_of_range),
        ]
    rules += [
        _Rule(
            "timestamp_too_far_in_past",
            ts_ms < arrived_ms - age_ms,
            pl.format(
                f"{field} is {{}}, {{}} before the file arrived (limit {{}})",
                iso_time,
                _human_duration(arrived_ms - ts_ms),
                _human_duration(pl.lit(age_ms)),
            ),
        ),
        _Rule(
            "timestamp_in_future",
            ts_ms > arrived_ms + skew_ms,
            pl.format(
                f"{field} is {{}}, {{}} after the file arrived (limit {{}})",
                iso_time,
                _human_duration(ts_ms - arrived_ms),
                _human_duration(pl.lit(skew_ms)),
            ),
        ),
    ]
    if spec is STRIPE:
        rules += _stripe_rules(list(columns))
    else:
        rules.append(
            _Rule(
                "invalid_properties",
                ~pl.col(_JSON_OK),
                pl.format("properties {} is not a JSON object", _snippet(pl.col("properties"))),
            )
        )
    size = pl.col(_PROPS).str.len_bytes()
    rules.append(
        _Rule(
            "properties_too_large",
            size > MAX_PROPERTIES_BYTES,
            pl.format(
                f"properties are {{}} bytes as compact JSON; the limit is {MAX_PROPERTIES_BYTES} bytes", size
            ),
        )
    )
    return sorted(rules, key=lambda rule: order.index(rule.code))


def _stripe_rules(columns: list[str]) -> list[_Rule]:
    rules = []
    if "identifier" in columns:
        rules.append(
            _Rule(
                "invalid_identifier",
                pl.col(_present_col("identifier")) & pl.col(_ID_LONG),
                pl.format(
                    f"identifier is {{}} characters long; the limit is {MAX_IDENTIFIER_CHARS}",
                    pl.col("identifier").str.len_chars(),
                ),
            )
        )
    if "payload_value" in columns:
        shown = _snippet(pl.col("payload_value").str.strip_chars())
        rules += [
            _Rule(
                "invalid_value",
                pl.col(_VALUE_BAD),
                pl.format('payload_value "{}" is not a finite decimal number', shown),
            ),
            _Rule(
                "invalid_value",
                pl.col(_TOO_PRECISE_COL),
                pl.format(
                    f"payload_value {{}} has more than {MAX_SIGNIFICANT_DIGITS} significant digits", shown
                ),
            ),
        ]
    return rules


def _snippet(expr: pl.Expr, chars: int = 60) -> pl.Expr:
    return pl.when(expr.str.len_chars() > chars).then(expr.str.slice(0, chars - 1) + "…").otherwise(expr)


def _plural(n: pl.Expr, unit: str) -> pl.Expr:
    return pl.format("{} {}", n, pl.when(n == 1).then(pl.lit(unit)).otherwise(pl.lit(unit + "s")))


_DURATION_UNITS: tuple[tuple[int, str], ...] = (
    (86_400_000, "day"),
    (3_600_000, "hour"),
    (60_000, "minute"),
    (1000, "second"),
    (1, "millisecond"),
)


def _human_duration(ms: pl.Expr) -> pl.Expr:
    """A duration in ms as its largest unit, plus the next one when not zero: "41 days 3 hours"."""
    expr: pl.Expr = _plural(ms, "millisecond")
    for (size, unit), (next_size, next_unit) in reversed(list(itertools.pairwise(_DURATION_UNITS))):
        rest = (ms % size) // next_size
        extra = pl.when(rest > 0).then(" " + _plural(rest, next_unit)).otherwise(pl.lit(""))
        expr = pl.when(ms >= size).then(_plural(ms // size, unit) + extra).otherwise(expr)
    return expr


def _events(valid: pl.LazyFrame, spec: LayoutSpec, file: FileVersion) -> pl.DataFrame:
    none = pl.lit(None, pl.String)
    stripe = spec is STRIPE
    return (
        valid.select(
            pl.col(_EVENT_ID).alias("event_id"),
            pl.lit(spec.name).alias("layout"),
            (pl.col("event_name") if stripe else none).alias("event_name"),
            (pl.col(STRIPE_CUSTOMER) if stripe else none).alias("customer_id"),
            (none if stripe else pl.col("subscription_id")).alias("subscription_id"),
            pl.col(_TS_MS).cast(pl.Datetime("ms")).alias("ts"),
            pl.col(_PROPS).alias("properties"),
            pl.lit(file.key).alias("source_file"),
            pl.lit(file.etag).alias("source_etag"),
            pl.col(_ROW).alias("source_row"),
        )
        .cast(EVENT_SCHEMA)
        .collect()
    )
