"""Record layouts (SPEC 2): detection from a file's columns, and Stripe's payload fields as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from usage_pipeline.core.ingest.model import Layout


@dataclass(frozen=True)
class LayoutSpec:
    """The fields of one layout: `fields` identify it, `required` must be columns and non-empty per row."""

    name: Layout
    label: str
    fields: tuple[str, ...]
    required: tuple[str, ...]
    timestamp: str
    markers: tuple[
        str, ...
    ]  # the fields only this layout has: a file with both layouts' markers is ambiguous
    field_prefix: str | None = None  # Stripe's payload_* columns belong to its layout too


STRIPE = LayoutSpec(
    name="stripe",
    label="Stripe",
    fields=("identifier", "timestamp", "event_name", "payload_stripe_customer_id"),
    required=("timestamp", "event_name", "payload_stripe_customer_id"),
    timestamp="timestamp",
    markers=("timestamp", "event_name", "payload_stripe_customer_id"),
    field_prefix="payload_",
)
CHARGEBEE = LayoutSpec(
    name="chargebee",
    label="Chargebee",
    fields=("subscription_id", "usage_timestamp", "deduplication_id", "properties"),
    required=("subscription_id", "usage_timestamp", "deduplication_id", "properties"),
    timestamp="usage_timestamp",
    markers=("subscription_id", "usage_timestamp", "deduplication_id"),
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
    """The layout with more of its own fields among `columns`, or (None, detail) when none, a tie, or both.

    A file with every marker column of both layouts is refused rather than read as one of them: the other
    layout's columns would be dropped without a word.
    """
    if all(all(m in columns for m in spec.markers) for spec in _LAYOUTS):
        both = " and ".join(f"{spec.label} ({', '.join(spec.markers)})" for spec in _LAYOUTS)
        return None, (
            f"The file has the marker columns of both layouts: {both}. A file holds one layout; "
            "write each layout's events to its own file."
        )
    counts = [(_own_fields(spec, columns), spec) for spec in _LAYOUTS]
    counts.sort(key=lambda pair: pair[0], reverse=True)
    (best, spec), (second, _) = counts[0], counts[1]
    if best > second:
        return spec, None
    shown = [c if len(c) <= 60 else c[:59] + "…" for c in columns[:30]]
    seen = ", ".join(shown) + (f" … ({len(columns)} in all)" if len(columns) > 30 else "")
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


def layout_columns(spec: LayoutSpec, columns: list[str]) -> list[str]:
    """The columns validation reads: the layout's fields present, and for Stripe every payload_* column."""
    prefix = spec.field_prefix
    return [c for c in columns if c in spec.fields or (prefix is not None and c.startswith(prefix))]


def payload_members(columns: list[str]) -> list[tuple[str, pl.Expr]]:
    """Stripe's properties as JSON object members: the payload_* text fields but the customer, unprefixed."""
    return [
        (c.removeprefix(PAYLOAD_PREFIX), pl.col(c))
        for c in columns
        if c.startswith(PAYLOAD_PREFIX) and c != STRIPE_CUSTOMER
    ]


def encode_members(members: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """The JSON object of `members` by polars' encoder: faster than json_object, but it writes nulls."""
    if not members:
        return pl.lit("{}")
    return pl.struct(value.alias(key) for key, value in members).struct.json_encode()


def json_object(members: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """A compact JSON object of text members per row; null values are left out, not written as null."""
    if not members:
        return pl.lit("{}")
    pieces = [
        pl.when(value.is_not_null()).then(
            pl.concat_str(pl.lit(json.dumps(key, ensure_ascii=False) + ":"), _json_string(value))
        )
        for key, value in members
    ]
    body = pl.concat_str(pieces, separator=",", ignore_nulls=True)
    return pl.concat_str(pl.lit("{"), body, pl.lit("}"))


def _json_string(expr: pl.Expr) -> pl.Expr:
    return pl.concat_str(pl.lit('"'), expr.str.replace_many(_JSON_ESCAPES), pl.lit('"'))
