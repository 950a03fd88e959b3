"""Record layouts (SPEC 2): detection from a frame's columns, and normalising fields to their text."""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from usage_pipeline.ingest.model import Layout


@dataclass(frozen=True)
class LayoutSpec:
    """The fields of one layout: `fields` identify it, `required` must be columns and non-empty per row."""

    name: Layout
    label: str
    fields: tuple[str, ...]
    required: tuple[str, ...]
    timestamp: str
    field_prefix: str | None = None  # Stripe's payload_* columns belong to its layout too


STRIPE = LayoutSpec(
    name="stripe",
    label="Stripe",
    fields=("identifier", "timestamp", "event_name", "payload_stripe_customer_id"),
    required=("timestamp", "event_name", "payload_stripe_customer_id"),
    timestamp="timestamp",
    field_prefix="payload_",
)
CHARGEBEE = LayoutSpec(
    name="chargebee",
    label="Chargebee",
    fields=("subscription_id", "usage_timestamp", "deduplication_id", "properties"),
    required=("subscription_id", "usage_timestamp", "deduplication_id", "properties"),
    timestamp="usage_timestamp",
)
_LAYOUTS: tuple[LayoutSpec, ...] = (STRIPE, CHARGEBEE)

STRIPE_CUSTOMER = "payload_stripe_customer_id"
PAYLOAD_PREFIX = "payload_"

# JSON string escapes: the two structural characters and every control character (RFC 8259 section 7).
_JSON_ESCAPES: dict[str, str] = {
    "\\": "\\\\",
    '"': '\\"',
    **{chr(c): f"\\u{c:04x}" for c in range(0x20)},
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _own_fields(spec: LayoutSpec, columns: list[str]) -> int:
    prefix = spec.field_prefix
    return sum(c in spec.fields or (prefix is not None and c.startswith(prefix)) for c in columns)


def detect_layout(columns: list[str]) -> tuple[LayoutSpec | None, str | None]:
    """The layout with more of its own fields among `columns`, or (None, detail) when none or a tie."""
    counts = [(_own_fields(spec, columns), spec) for spec in _LAYOUTS]
    counts.sort(key=lambda pair: pair[0], reverse=True)
    (best, spec), (second, _) = counts[0], counts[1]
    if best > second:
        return spec, None
    seen = ", ".join(columns[:30]) + (f" … ({len(columns)} in all)" if len(columns) > 30 else "")
    why = (
        "match no known layout"
        if best == 0
        else f"match the Stripe and the Chargebee layout equally well ({best} fields each)"
    )
    return None, (
        f"The file's columns ({seen or 'none'}) {why}. The Stripe layout has timestamp, event_name, "
        "payload_stripe_customer_id and payload_* columns; the Chargebee layout has subscription_id, "
        "usage_timestamp, deduplication_id and properties."
    )


def first_missing_column(spec: LayoutSpec, columns: list[str]) -> str | None:
    return next((name for name in spec.required if name not in columns), None)


def flatten_payload(frame: pl.DataFrame) -> pl.DataFrame:
    """A nested JSON `"payload": {...}` becomes payload_* columns; flat payload_* columns win over nested."""
    dtype = frame.schema.get("payload")
    if not isinstance(dtype, pl.Struct):
        return frame
    nested = [f.name for f in dtype.fields if PAYLOAD_PREFIX + f.name not in frame.columns]
    return frame.with_columns(
        pl.col("payload").struct.field(name).alias(PAYLOAD_PREFIX + name) for name in nested
    ).drop("payload")


def layout_columns(spec: LayoutSpec, columns: list[str]) -> list[str]:
    """The columns validation reads: the layout's fields present, and for Stripe every payload_* column."""
    prefix = spec.field_prefix
    return [c for c in columns if c in spec.fields or (prefix is not None and c.startswith(prefix))]


def as_text(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """`columns` of `frame` as String: numbers as their decimal text, objects and arrays as compact JSON."""
    schema = frame.schema
    return frame.select(_scalar_text(pl.col(name), schema[name]).alias(name) for name in columns)


def _scalar_text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return expr
    if isinstance(dtype, pl.Struct | pl.List | pl.Array):
        return _json_value(expr, dtype)
    if dtype.is_float():
        # polars widens a JSON column that mixes 5 and 5.5 to floats; an integral value is still an
        # integer (else one fractional row would turn every valid integer timestamp of the file into
        # "…​.0" and reject it). Exact up to 2**53, far beyond millisecond epochs.
        integral = (expr == expr.floor()) & (expr.abs() < 2**53)
        return pl.when(integral).then(expr.cast(pl.Int64).cast(pl.String)).otherwise(expr.cast(pl.String))
    # Integers keep their text; booleans become true/false.
    return expr.cast(pl.String)


def payload_members(columns: list[str]) -> list[tuple[str, pl.Expr, pl.DataType]]:
    """Stripe's properties as JSON object members: the payload_* text fields but the customer, unprefixed."""
    return [
        (c.removeprefix(PAYLOAD_PREFIX), pl.col(c), pl.String())
        for c in columns
        if c.startswith(PAYLOAD_PREFIX) and c != STRIPE_CUSTOMER
    ]


def encode_members(members: list[tuple[str, pl.Expr, pl.DataType]]) -> pl.Expr:
    """The JSON object of `members` by polars' encoder: faster than json_object, but it writes nulls."""
    if not members:
        return pl.lit("{}")
    return pl.struct(value.alias(key) for key, value, _ in members).struct.json_encode()


def json_object(members: list[tuple[str, pl.Expr, pl.DataType]]) -> pl.Expr:
    """A compact JSON object per row from (key, value, dtype); null values are left out, not written as null.

    Leaving nulls out matters for JSON input: polars gives every row of a struct column every key any row
    had, with null where the row did not have it.
    """
    if not members:
        return pl.lit("{}")
    pieces = [
        pl.when(value.is_not_null()).then(
            pl.concat_str(pl.lit(json.dumps(key, ensure_ascii=False) + ":"), _json_value(value, dtype))
        )
        for key, value, dtype in members
    ]
    body = pl.concat_str(pieces, separator=",", ignore_nulls=True)
    return pl.concat_str(pl.lit("{"), body, pl.lit("}"))


def _json_string(expr: pl.Expr) -> pl.Expr:
    return pl.concat_str(pl.lit('"'), expr.str.replace_many(_JSON_ESCAPES), pl.lit('"'))


def _json_value(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return _json_string(expr)
    if isinstance(dtype, pl.Struct):
        members = [(f.name, expr.struct.field(f.name), f.dtype) for f in dtype.fields]
        return pl.when(expr.is_not_null()).then(json_object(members))
    if isinstance(dtype, pl.List | pl.Array):
        # Rare in usage files: let polars encode it inside a one-field struct, then unwrap `{"v":...}`.
        encoded = pl.struct(expr.alias("v")).struct.json_encode()
        return pl.when(expr.is_not_null()).then(encoded.str.strip_prefix('{"v":').str.strip_suffix("}"))
    if dtype == pl.Null:
        return pl.lit(None, dtype=pl.String)
    return expr.cast(pl.String)
