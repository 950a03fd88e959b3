"""How Python values are stored: times are UTC (TIMESTAMP columns hold naive UTC), Arrow column types."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

# The Arrow types of DECIMAL(38, 12) quantities and TIMESTAMP (naive UTC, microseconds) columns.
QUANTITY_TYPE = pa.decimal128(38, 12)
TIMESTAMP_TYPE = pa.timestamp("us")


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime: naive input is taken as UTC, other offsets are converted."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def naive_utc(value: datetime) -> datetime:
    """The value for a TIMESTAMP column: UTC without tzinfo (naive input is taken as UTC already)."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)
