"""The sample files of `usage-pipeline demo`: both layouts, every format, bad rows, duplicates, bad files."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from usage_pipeline.cli.generate import Layout, generate_usage_frame, serialize, write_csv
from usage_pipeline.core.ingest.model import (
    REASON_UNKNOWN_LAYOUT,
    REASON_UNREADABLE,
    REASON_UNSUPPORTED,
    STATUS_EMPTY,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    STATUS_WITH_ERRORS,
    FileStatus,
    missing_column,
)

# The bundled catalog's demo ids (see the top comment of usage_pipeline/core/catalog/example.yaml).
DEMO_CUSTOMERS: tuple[str, ...] = ("cus_daily_001", "cus_daily_002")
DEMO_SUBSCRIPTIONS: tuple[str, ...] = ("sub_daily_cb_001",)
DEMO_EVENT_NAMES: tuple[str, ...] = ("api_call", "llm_tokens")
DEMO_FEATURES: tuple[str, ...] = ("storage", "seats")
# A customer priced for api_call only (JPY) and one the catalog does not know: metering exceptions.
DEMO_OTHER_CUSTOMERS: tuple[str, ...] = ("cus_daily_004", "cus_unknown_999")


@dataclass(frozen=True)
class DemoFile:
    """One demo file and what ingesting the set in key order should record for it."""

    data: bytes
    expected_status: FileStatus
    failed_reason: str | None = None
    rows_total: int = 0
    rows_duplicate: int = 0  # within the file and against the files before it
    errors: Mapping[str, int] = field(default_factory=dict)  # row error code -> rows


def _demo_file(frame: pl.DataFrame, layout: Layout, fmt: str, *, resent: bool = False) -> DemoFile:
    codes = frame.get_column("_error_code").drop_nulls().value_counts()
    errors = dict(
        zip(codes.get_column("_error_code").to_list(), codes.get_column("count").to_list(), strict=True)
    )
    duplicates = frame.height if resent else int(frame.get_column("_duplicate").sum())
    status = STATUS_WITH_ERRORS if errors else STATUS_SUCCEEDED
    return DemoFile(serialize(frame, layout, fmt), status, None, frame.height, duplicates, errors)


def demo_set(arrival: datetime, seed: int = 7) -> dict[str, DemoFile]:
    """The `usage-pipeline demo` files (relative keys) with their expected outcomes.

    Good events fall on the UTC day before `arrival`, so closing today's partition (daily periods ending
    today 00:00) bills them. Keys sort in upload order: a `*-z-resent` file repeats rows of an earlier one.
    The bytes depend only on the UTC day of `arrival` (and the seed): a second demo the same day uploads
    the same file versions (same ETags), which are already ingested.
    """
    day_end = arrival.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # Bad times are placed from the end of today: too old and in the future for any upload during today.
    common = {"arrival": day_end + timedelta(days=1), "window_end": day_end, "time_span": timedelta(days=1)}
    ids = {"customers": DEMO_CUSTOMERS, "subscriptions": DEMO_SUBSCRIPTIONS, "event_names": DEMO_EVENT_NAMES}
    plan: list[tuple[str, Layout, int, dict[str, Any]]] = [
        ("stripe/usage-a.csv", "stripe", 400, {"duplicate_rate": 0.02}),
        ("stripe/usage-b.json", "stripe", 200, {}),
        ("stripe/usage-c.jsonl", "stripe", 200, {}),
        ("stripe/usage-d.csv.gz", "stripe", 200, {}),
        (f"stripe/{day_end - timedelta(days=1):%Y/%m/%d}/usage-e.jsonl.gz", "stripe", 150, {}),
        ("stripe/bad-rows.csv", "stripe", 100, {"error_rate": 0.16}),
        ("stripe/other-customers.csv", "stripe", 60,
         {"customers": DEMO_OTHER_CUSTOMERS, "event_names": ("api_call",)}),
        ("chargebee/usage-a.csv", "chargebee", 300, {"duplicate_rate": 0.02}),
        ("chargebee/usage-b.json", "chargebee", 150, {}),
        ("chargebee/usage-c.jsonl", "chargebee", 150, {}),
        ("chargebee/usage-d.csv.gz", "chargebee", 150, {}),
        ("chargebee/usage-e.ndjson", "chargebee", 100, {}),
        ("chargebee/bad-rows.jsonl", "chargebee", 90, {"error_rate": 0.2}),
    ]  # fmt: skip
    files: dict[str, DemoFile] = {}
    frames: dict[str, pl.DataFrame] = {}
    for n, (key, layout, rows, options) in enumerate(plan):
        fmt = key.rsplit("/", 1)[-1].split(".", 1)[1]
        frame = generate_usage_frame(
            layout=layout, rows=rows, seed=seed + n, key_hint=key, features=DEMO_FEATURES,
            **common, **{**ids, **options},
        )  # fmt: skip
        frames[key] = frame
        files[key] = _demo_file(frame, layout, fmt)
    # Re-sent rows: the same events again, in another format, later in upload order.
    files["stripe/usage-z-resent.jsonl"] = _demo_file(
        frames["stripe/usage-a.csv"].slice(100, 50), "stripe", "jsonl", resent=True
    )
    files["chargebee/usage-z-resent.csv"] = _demo_file(
        frames["chargebee/usage-a.csv"].slice(50, 40), "chargebee", "csv", resent=True
    )
    garbage = b"\x00\xff" + random.Random(seed).randbytes(510)
    no_customer = (
        frames["stripe/usage-b.json"]
        .slice(0, 20)
        .select("identifier", "timestamp", "event_name", "payload_value")
    )
    header_only = serialize(frames["stripe/usage-a.csv"].clear(), "stripe", "csv")
    # A CSV whose last two lines have a field too few and one too many: rejected alone, malformed_record.
    ragged_rows = generate_usage_frame(
        layout="stripe", rows=8, seed=seed + 99, key_hint="edge-cases/ragged-lines.csv",
        features=DEMO_FEATURES, **common, **ids,
    )  # fmt: skip
    ragged = (
        serialize(ragged_rows, "stripe", "csv")
        + b"ragged_1,1,api_call\nragged_2,1,api_call,cus_daily_001,1,extra,fields\n"
    )
    failed = STATUS_FAILED
    files.update({
        "edge-cases/corrupt.csv.gz": DemoFile(b"\x1f\x8b\x08\x00" + garbage, failed, REASON_UNREADABLE),
        "edge-cases/garbage.json": DemoFile(garbage, failed, REASON_UNREADABLE),
        "edge-cases/unknown-layout.csv": DemoFile(b"a,b,c\n1,2,3\n4,5,6\n", failed, REASON_UNKNOWN_LAYOUT),
        "edge-cases/missing-column.csv": DemoFile(
            write_csv(no_customer), failed, missing_column("payload_stripe_customer_id")
        ),
        "edge-cases/empty.csv": DemoFile(b"", STATUS_EMPTY),
        "edge-cases/header-only.csv": DemoFile(header_only, STATUS_EMPTY),
        "edge-cases/empty-array.json": DemoFile(b"[]", STATUS_EMPTY),
        "edge-cases/ragged-lines.csv": DemoFile(
            ragged, STATUS_WITH_ERRORS, None, 10, 0, {"malformed_record": 2}
        ),
        "edge-cases/notes.txt": DemoFile(b"usage notes, not a usage file\n", failed, REASON_UNSUPPORTED),
    })  # fmt: skip
    return files


def demo_files(arrival: datetime, seed: int = 7) -> dict[str, bytes]:
    """The bytes of the `usage-pipeline demo` files by relative key (a few thousand rows in all)."""
    return {key: demo.data for key, demo in demo_set(arrival, seed).items()}
