"""Per-row validation (SPEC 3) and in-file deduplication (SPEC 4), as vectorised polars expressions."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from usage_pipeline.ingest.layouts import (
    PAYLOAD_PREFIX,
    STRIPE,
    STRIPE_CUSTOMER,
    LayoutSpec,
    json_object,
)
from usage_pipeline.ingest.model import EVENT_SCHEMA, REJECT_SCHEMA, FileVersion, ValidationLimits

MAX_IDENTIFIER_CHARS = 100
MAX_SIGNIFICANT_DIGITS = 15
MAX_PROPERTIES_BYTES = 1024
# A Stripe timestamp at or above this looks like milliseconds; a Chargebee one below it looks like seconds.
UNIT_THRESHOLD = 10**11
# The instants a datetime can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, in ms since the epoch.
_MIN_MS = -62_135_596_800_000
_MAX_MS = 253_402_300_799_999

_INTEGER = r"^[+-]?\d+$"
_DECIMAL = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
# More significant digits than allowed: from the first non-zero digit of the mantissa to a later non-zero
# one (leading and trailing zeros are not significant). Applied only to text that already is a decimal.
_TOO_PRECISE = rf"^[+-]?[0.]*[1-9](?:\.?\d){{{MAX_SIGNIFICANT_DIGITS - 1},}}\.?[1-9]"
# JSON whitespace outside string literals; the replacement keeps the literals (group 1) as they are.
_JSON_LAYOUT_SPACE = r'("(?:[^"\\]|\\.)*")|[ \t\n\r]+'

_ROW = "__row"
_TS_TEXT = "__ts_text"
_TS = "__ts"
_TS_MS = "__ts_ms"
_PROPS = "__properties"
_ID_PRESENT = "__id_present"
_VALUE = "__value"
_RULE = "__rule"
_EVENT_ID = "__event_id"


@dataclass(frozen=True)
class _Rule:
    code: str
    broken: pl.Expr  # true where the row breaks the rule, over the prepared columns
    message: pl.Expr  # evaluated on rejected rows only


def validate_rows(
    text: pl.DataFrame, raw: pl.DataFrame, spec: LayoutSpec, file: FileVersion, limits: ValidationLimits
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(events, rejects, duplicates dropped) for a frame of the layout's fields as text.

    `raw` is the frame as read, row for row with `text`; rejected rows are reported from it.
    """
    rules = _rules(spec, text.columns, file, limits)
    prepared = (
        text.lazy()
        .with_columns(_prepare(spec, text.columns))
        .with_columns(_timestamp_ms(spec))
        .with_columns(pl.coalesce(pl.when(r.broken).then(pl.lit(i, pl.Int8)) for i, r in enumerate(rules)).alias(_RULE))
        .collect()
    )
    rejected = prepared[_RULE].is_not_null()
    rejects = _rejects(prepared.filter(rejected), raw.filter(rejected), rules, file)
    valid = prepared.filter(~rejected).with_columns(_event_id(spec, text.columns, file).alias(_EVENT_ID))
    key = [STRIPE_CUSTOMER, _EVENT_ID] if spec is STRIPE else ["subscription_id", _TS_MS, _EVENT_ID]
    unique = valid.filter(pl.struct(key).is_first_distinct())
    return _events(unique, spec, file), rejects, valid.height - unique.height


def _prepare(spec: LayoutSpec, columns: list[str]) -> list[pl.Expr]:
    ts_text = pl.col(spec.timestamp).str.strip_chars()
    exprs = [
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(_ROW),
        ts_text.alias(_TS_TEXT),
        # An integer epoch is exactly what this cast accepts (sign and ASCII digits); overflow gives null too.
        ts_text.cast(pl.Int64, strict=False).alias(_TS),
    ]
    if spec is STRIPE:
        members = [
            (c.removeprefix(PAYLOAD_PREFIX), pl.col(c), pl.String())
            for c in columns
            if c.startswith(PAYLOAD_PREFIX) and c != STRIPE_CUSTOMER
        ]
        exprs.append(json_object(members).alias(_PROPS))
        if "identifier" in columns:
            exprs.append(_present("identifier").alias(_ID_PRESENT))
        if "payload_value" in columns:
            exprs.append(pl.col("payload_value").str.strip_chars().alias(_VALUE))
    else:
        exprs.append(pl.col("properties").str.replace_all(_JSON_LAYOUT_SPACE, "$1").alias(_PROPS))
    return exprs


def _timestamp_ms(spec: LayoutSpec) -> pl.Expr:
    # Clipped so that rows rejected for their unit or range cannot overflow the arithmetic.
    if spec is STRIPE:
        return (pl.col(_TS).clip(_MIN_MS // 1000, UNIT_THRESHOLD) * 1000).alias(_TS_MS)
    return pl.col(_TS).clip(UNIT_THRESHOLD, _MAX_MS).alias(_TS_MS)


def _present(name: str) -> pl.Expr:
    """Not null and not only whitespace: an empty cell counts as an absent field."""
    return pl.col(name).str.contains(r"\S").fill_null(False)


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
    """A duration in ms as its largest unit plus the next one when not zero: "41 days 3 hours"."""
    expr: pl.Expr = _plural(ms, "millisecond")
    for (size, unit), (next_size, next_unit) in reversed(list(zip(_DURATION_UNITS, _DURATION_UNITS[1:]))):
        rest = (ms % size) // next_size
        text = _plural(ms // size, unit) + pl.when(rest > 0).then(" " + _plural(rest, next_unit)).otherwise(pl.lit(""))
        expr = pl.when(ms >= size).then(text).otherwise(expr)
    return expr


def _rules(spec: LayoutSpec, columns: list[str], file: FileVersion, limits: ValidationLimits) -> list[_Rule]:
    """The row checks in SPEC 3 precedence order: a rejected row gets the first rule it breaks."""
    field = spec.timestamp
    ts, ts_ms = pl.col(_TS), pl.col(_TS_MS)
    arrived_ms = int(file.last_modified.timestamp() * 1000)
    age_ms = int(limits.max_event_age.total_seconds() * 1000)
    skew_ms = int(limits.max_future_skew.total_seconds() * 1000)
    iso_time = pl.col(_TS_MS).cast(pl.Datetime("ms")).dt.to_string("%Y-%m-%dT%H:%M:%S%.fZ")
    unit, other_unit = ("seconds", "milliseconds") if spec is STRIPE else ("milliseconds", "seconds")
    out_of_range = pl.format("{} {} is outside the dates a timestamp can hold (years 1 to 9999)", pl.lit(field), ts)

    rules = [
        _Rule("missing_required_field", ~_present(name), pl.lit(f"{name} is missing or empty"))
        for name in spec.required
    ]
    not_integer = pl.format(
        '{} "{}" is not an integer number of {} since the Unix epoch', pl.lit(field), _snippet(pl.col(_TS_TEXT)), pl.lit(unit)
    )
    rules.append(
        _Rule(
            "invalid_timestamp",
            ts.is_null(),
            pl.when(pl.col(_TS_TEXT).str.contains(_INTEGER))
            .then(pl.format("{} {} is outside the range of a 64-bit integer", pl.lit(field), pl.col(_TS_TEXT)))
            .otherwise(not_integer),
        )
    )
    wrong_unit = pl.format(
        "{} {} looks like {}; the {} layout wants {}", pl.lit(field), ts, pl.lit(other_unit), pl.lit(spec.label), pl.lit(unit)
    )
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
                "{} is {}, {} before the file arrived (limit {})",
                pl.lit(field),
                iso_time,
                _human_duration(arrived_ms - ts_ms),
                _human_duration(pl.lit(age_ms)),
            ),
        ),
        _Rule(
            "timestamp_in_future",
            ts_ms > arrived_ms + skew_ms,
            pl.format(
                "{} is {}, {} after the file arrived (limit {})",
                pl.lit(field),
                iso_time,
                _human_duration(ts_ms - arrived_ms),
                _human_duration(pl.lit(skew_ms)),
            ),
        ),
    ]
    if spec is STRIPE:
        rules += _stripe_rules(columns)
    else:
        rules.append(
            _Rule(
                "invalid_properties",
                ~(pl.col("properties").str.json_path_match("$").is_not_null() & pl.col(_PROPS).str.starts_with("{")),
                pl.format("properties {} is not a JSON object", _snippet(pl.col("properties"))),
            )
        )
    size = pl.col(_PROPS).str.len_bytes()
    rules.append(
        _Rule(
            "properties_too_large",
            size > MAX_PROPERTIES_BYTES,
            pl.format("properties are {} bytes as compact JSON; the limit is {} bytes", size, pl.lit(MAX_PROPERTIES_BYTES)),
        )
    )
    return rules


def _stripe_rules(columns: list[str]) -> list[_Rule]:
    rules = []
    if "identifier" in columns:
        length = pl.col("identifier").str.len_chars()
        rules.append(
            _Rule(
                "invalid_identifier",
                pl.col(_ID_PRESENT) & (length > MAX_IDENTIFIER_CHARS),
                pl.format("identifier is {} characters long; the limit is {}", length, pl.lit(MAX_IDENTIFIER_CHARS)),
            )
        )
    if "payload_value" in columns:
        value = pl.col(_VALUE)
        finite = value.str.contains(_DECIMAL) & value.cast(pl.Float64, strict=False).is_finite()
        rules += [
            _Rule(
                "invalid_value",
                (value != "") & ~finite.fill_null(False),
                pl.format('payload_value "{}" is not a finite decimal number', _snippet(value)),
            ),
            _Rule(
                "invalid_value",
                value.str.contains(_TOO_PRECISE),
                pl.format(
                    "payload_value {} has more than {} significant digits",
                    _snippet(value),
                    pl.lit(MAX_SIGNIFICANT_DIGITS),
                ),
            ),
        ]
    return rules


def _event_id(spec: LayoutSpec, columns: list[str], file: FileVersion) -> pl.Expr:
    if spec is not STRIPE:
        return pl.col("deduplication_id")
    # Derived from (file key, row) so that re-ingesting the same file gives the same ids and dedupes.
    derived = pl.format("{}#{}", pl.lit(file.key), pl.col(_ROW))
    if "identifier" not in columns:
        return derived
    return pl.when(pl.col(_ID_PRESENT)).then(pl.col("identifier")).otherwise(derived)


def _events(valid: pl.DataFrame, spec: LayoutSpec, file: FileVersion) -> pl.DataFrame:
    none = pl.lit(None, pl.String)
    stripe = spec is STRIPE
    return valid.select(
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
    ).cast(EVENT_SCHEMA)  # type: ignore[arg-type]


def _rejects(bad: pl.DataFrame, raw: pl.DataFrame, rules: list[_Rule], file: FileVersion) -> pl.DataFrame:
    rule = pl.col(_RULE)
    codes = {i: r.code for i, r in enumerate(rules)}
    return pl.DataFrame(
        {
            "source_file": pl.repeat(file.key, bad.height, eager=True, dtype=pl.String),
            "source_etag": pl.repeat(file.etag, bad.height, eager=True, dtype=pl.String),
            "source_row": bad[_ROW],
            "error_code": bad.select(rule.replace_strict(codes, return_dtype=pl.String)).to_series(),
            "error_message": bad.select(
                pl.coalesce(pl.when(rule == i).then(r.message) for i, r in enumerate(rules))
            ).to_series(),
            "raw_record": raw.select(pl.struct(pl.all()).struct.json_encode()).to_series(),
        },
        schema=REJECT_SCHEMA,
    )
