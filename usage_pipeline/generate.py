"""Synthetic usage files (Stripe and Chargebee layouts) for the demo, the benchmarks and the tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from usage_pipeline.ingest.model import (
    REASON_UNKNOWN_LAYOUT,
    REASON_UNREADABLE,
    REASON_UNSUPPORTED,
    STATUS_EMPTY,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    STATUS_WITH_ERRORS,
    FileStatus,
    Layout,
    missing_column,
)

FORMATS: tuple[str, ...] = ("csv", "json", "jsonl", "csv.gz", "json.gz", "jsonl.gz")
DEFAULT_CUSTOMERS: tuple[str, ...] = ("cus_001", "cus_002")
DEFAULT_SUBSCRIPTIONS: tuple[str, ...] = ("sub_daily_001",)
DEFAULT_EVENT_NAMES: tuple[str, ...] = ("api_call", "llm_tokens")
DEFAULT_FEATURES: tuple[str, ...] = ("storage", "seats", "api")

# Each kind of bad row the generator can write, and the SPEC 3 row error code ingest must give it.
# Bad times sit well outside the default windows (35 days back, 5 minutes ahead).
STRIPE_ERROR_KINDS: dict[str, str] = {
    "empty_customer": "missing_required_field",
    "empty_timestamp": "missing_required_field",
    "fractional_timestamp": "invalid_timestamp",
    "milliseconds_timestamp": "invalid_timestamp",
    "too_old": "timestamp_too_far_in_past",
    "in_future": "timestamp_in_future",
    "long_identifier": "invalid_identifier",
    "non_numeric_value": "invalid_value",
}
CHARGEBEE_ERROR_KINDS: dict[str, str] = {
    "empty_subscription": "missing_required_field",
    "empty_timestamp": "missing_required_field",
    "fractional_timestamp": "invalid_timestamp",
    "seconds_timestamp": "invalid_timestamp",
    "too_old": "timestamp_too_far_in_past",
    "in_future": "timestamp_in_future",
    "properties_array": "invalid_properties",
    "properties_string": "invalid_properties",
    "large_properties": "properties_too_large",
}
COLUMNS: dict[str, tuple[str, ...]] = {
    "stripe": ("identifier", "timestamp", "event_name", "payload_stripe_customer_id", "payload_value"),
    "chargebee": ("subscription_id", "usage_timestamp", "deduplication_id", "properties"),
}
DEDUP_KEYS: dict[str, tuple[str, ...]] = {
    "stripe": ("payload_stripe_customer_id", "identifier"),
    "chargebee": ("subscription_id", "usage_timestamp", "deduplication_id"),
}
TOO_OLD_S = 40 * 86_400
IN_FUTURE_S = 86_400
_DAY_S = 86_400


def _tag(seed: int, key_hint: str) -> str:
    """A short id prefix unique to (seed, key_hint), so two files never share ids by accident."""
    return hashlib.blake2b(f"{key_hint}|{seed}".encode(), digest_size=5).hexdigest()


def _rand(n: int, seed: int, stream: int) -> pl.Expr:
    """64 pseudo-random bits per row that depend only on (seed, stream, row index)."""
    return pl.int_range(0, n, dtype=pl.UInt64).hash(seed=(seed * 1_000_003 + stream) % (1 << 63))


def _pick(values: Sequence[str], index: pl.Expr) -> pl.Expr:
    if not values:
        raise ValueError("need at least one value to pick from")
    return pl.lit(pl.Series(list(values), dtype=pl.String)).gather(index % len(values))


def _bad_times(h: pl.Expr, arrival_s: int) -> tuple[pl.Expr, pl.Expr]:
    """Epoch seconds well before the oldest accepted time and well after the future skew."""
    jitter = (h % _DAY_S).cast(pl.Int64)
    return pl.lit(arrival_s - TOO_OLD_S) - jitter, pl.lit(arrival_s + IN_FUTURE_S) + jitter


def _error_kinds(n: int, n_err: int, kinds: Sequence[str], seed: int) -> pl.Series:
    """Which rows are bad and how: n_err random rows, the kinds cycled so every kind shows up."""
    none = pl.repeat(None, n, dtype=pl.String, eager=True)
    if n_err == 0:
        return none
    rows = pl.int_range(0, n, eager=True).sample(n_err, seed=seed)
    labels = pl.Series([kinds[(seed + j) % len(kinds)] for j in range(n_err)], dtype=pl.String)
    return none.scatter(rows, labels)


@dataclass(frozen=True)
class _Rows:
    """What the column builders need: row count, id prefix, seed, time window and the id lists."""

    n: int
    tag: str
    seed: int
    start_s: int  # good event times are in [start_s, start_s + span_s)
    span_s: int
    arrival_s: int
    customers: Sequence[str]
    subscriptions: Sequence[str]
    event_names: Sequence[str]
    features: Sequence[str]


def _stripe_columns(r: _Rows) -> list[pl.Expr]:
    h1, h2, kind = _rand(r.n, r.seed, 1), _rand(r.n, r.seed, 2), pl.col("_kind")
    old, future = _bad_times(h1, r.arrival_s)
    ts = pl.lit(r.start_s, pl.Int64) + (h1 % r.span_s).cast(pl.Int64)
    identifier = pl.lit(f"evt_{r.tag}_") + pl.int_range(0, r.n).cast(pl.String)
    return [
        pl.when(kind == "long_identifier").then(identifier + "_" + "x" * 100).otherwise(identifier)
        .alias("identifier"),
        pl.when(kind == "empty_timestamp").then(None)
        .when(kind == "fractional_timestamp").then(ts.cast(pl.String) + ".5")
        .when(kind == "milliseconds_timestamp").then((ts * 1000).cast(pl.String))
        .when(kind == "too_old").then(old.cast(pl.String))
        .when(kind == "in_future").then(future.cast(pl.String))
        .otherwise(ts.cast(pl.String)).alias("timestamp"),
        _pick(r.event_names, h2).alias("event_name"),
        pl.when(kind == "empty_customer").then(None)
        .otherwise(_pick(r.customers, h2 // (1 << 16))).alias("payload_stripe_customer_id"),
        pl.when(kind == "non_numeric_value").then(pl.lit("twelve"))
        .otherwise((1 + (h2 // (1 << 32)) % 1000).cast(pl.String)).alias("payload_value"),
    ]  # fmt: skip


def _properties(features: Sequence[str], h: pl.Expr) -> pl.Expr:
    """Properties that the example meters filter on: storage -> gb, seats -> user_id, others -> value."""
    if not features:
        raise ValueError("need at least one feature")
    which, amount = (h // (1 << 16)) % len(features), (h // (1 << 32)) % 5000
    expr: Any = pl
    for k, feature in enumerate(features):
        head = '{{"feature":' + json.dumps(feature).replace("{", "{{").replace("}", "}}")
        if feature == "storage":
            body = pl.format(head + ',"gb":{}}}', (amount / 10).round(1))
        elif feature == "seats":
            body = pl.format(head + ',"user_id":"u_{}"}}', amount % 50)
        else:
            body = pl.format(head + ',"value":{}}}', 1 + amount % 1000)
        expr = expr.when(which == k).then(body)
    return expr.otherwise(None)


def _chargebee_columns(r: _Rows) -> list[pl.Expr]:
    h1, h2, kind = _rand(r.n, r.seed, 1), _rand(r.n, r.seed, 2), pl.col("_kind")
    old, future = _bad_times(h1, r.arrival_s)
    # Milliseconds in [start, start + span - 1 s].
    ts = pl.lit(r.start_s * 1000, pl.Int64) + (h1 % max(r.span_s * 1000 - 999, 1)).cast(pl.Int64)
    large = '{"feature":"storage","gb":1,"note":"' + "x" * 1100 + '"}'
    return [
        pl.when(kind == "empty_subscription").then(None)
        .otherwise(_pick(r.subscriptions, h2)).alias("subscription_id"),
        pl.when(kind == "empty_timestamp").then(None)
        .when(kind == "fractional_timestamp").then(ts.cast(pl.String) + ".5")
        .when(kind == "seconds_timestamp").then((ts // 1000).cast(pl.String))
        .when(kind == "too_old").then((old * 1000).cast(pl.String))
        .when(kind == "in_future").then((future * 1000).cast(pl.String))
        .otherwise(ts.cast(pl.String)).alias("usage_timestamp"),
        (pl.lit(f"dd_{r.tag}_") + pl.int_range(0, r.n).cast(pl.String)).alias("deduplication_id"),
        pl.when(kind == "properties_array").then(pl.lit('["storage",1]'))
        .when(kind == "properties_string").then(pl.lit('"storage"'))
        .when(kind == "large_properties").then(pl.lit(large))
        .otherwise(_properties(r.features, h2)).alias("properties"),
    ]  # fmt: skip


def generate_usage_frame(
    *,
    layout: Layout,
    rows: int,
    arrival: datetime,
    seed: int = 0,
    error_rate: float = 0.0,
    duplicate_rate: float = 0.0,
    customers: Sequence[str] = DEFAULT_CUSTOMERS,
    subscriptions: Sequence[str] = DEFAULT_SUBSCRIPTIONS,
    event_names: Sequence[str] = DEFAULT_EVENT_NAMES,
    features: Sequence[str] = DEFAULT_FEATURES,
    time_span: timedelta = timedelta(days=1),
    window_end: datetime | None = None,
    key_hint: str = "",
) -> pl.DataFrame:
    """The rows of a synthetic file as text columns, plus the truth: `_error_code` and `_duplicate`.

    Good event times fall in [window_end - time_span, window_end - 1 s] (window_end defaults to arrival);
    bad times are placed relative to `arrival`. Exactly round(rows * error_rate) rows are bad, the kinds of
    STRIPE_ERROR_KINDS / CHARGEBEE_ERROR_KINDS in turn, and round(rows * duplicate_rate) rows repeat a whole
    earlier good row (so its dedup key). With no errors and no duplicates, row i depends only on
    (seed, key_hint, i): a smaller file with the same seed and key_hint is a prefix of a larger one.
    """
    if layout not in COLUMNS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(COLUMNS)}")
    if not (0.0 <= error_rate <= 1.0 and 0.0 <= duplicate_rate <= 1.0):
        raise ValueError("error_rate and duplicate_rate must be in [0, 1]")
    n_dup = min(round(rows * duplicate_rate), max(rows - 1, 0))
    n_orig = rows - n_dup
    # Keep one good row to copy when duplicates are asked for.
    n_err = min(round(rows * error_rate), n_orig - (1 if n_dup else 0))
    kinds = STRIPE_ERROR_KINDS if layout == "stripe" else CHARGEBEE_ERROR_KINDS
    span_s = max(int(time_span.total_seconds()), 1)
    spec = _Rows(
        n=n_orig, tag=_tag(seed, key_hint), seed=seed,
        start_s=int((window_end or arrival).timestamp()) - span_s, span_s=span_s,
        arrival_s=int(arrival.timestamp()), customers=customers, subscriptions=subscriptions,
        event_names=event_names, features=features,
    )  # fmt: skip
    columns = _stripe_columns(spec) if layout == "stripe" else _chargebee_columns(spec)
    frame = pl.DataFrame({"_kind": _error_kinds(n_orig, n_err, list(kinds), seed)}).select(
        *columns,
        pl.col("_kind").replace_strict(kinds, default=None, return_dtype=pl.String).alias("_error_code"),
        pl.lit(False).alias("_duplicate"),
    )
    if n_dup == 0:
        return frame
    # Each duplicate copies a random good row and lands at a random place after it.
    good = pl.int_range(0, n_orig, eager=True).filter(frame.get_column("_error_code").is_null())
    sources = good.sample(n_dup, with_replacement=True, seed=seed + 1)
    after = sources.cast(pl.UInt64)
    place = pl.select((after + 1 + _rand(n_dup, seed, 3) % (n_orig - after)).cast(pl.Int64) * 2 - 1)
    copies = frame.gather(sources).with_columns(
        pl.lit(True).alias("_duplicate"), place.to_series().alias("_o")
    )
    return (
        pl.concat([frame.with_columns((pl.int_range(0, n_orig) * 2).alias("_o")), copies])
        .sort("_o", maintain_order=True)
        .drop("_o")
    )


def _quoted(expr: pl.Expr, null: str = '""') -> pl.Expr:
    escaped = expr.str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True)
    return pl.when(expr.is_null()).then(pl.lit(null)).otherwise(pl.lit('"') + escaped + '"')


def _json_lines(frame: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """One compact JSON object per row; Stripe rows carry the nested `payload` object."""
    col = pl.col
    if layout == "stripe":
        value = pl.when(col("payload_value").str.contains(r"^-?[0-9]+(\.[0-9]+)?$"))
        parts = [
            '{"identifier":', _quoted(col("identifier")),
            ',"timestamp":', col("timestamp").fill_null("null"),
            ',"event_name":', _quoted(col("event_name")),
            ',"payload":{"stripe_customer_id":', _quoted(col("payload_stripe_customer_id")),
            ',"value":', value.then(col("payload_value")).otherwise(_quoted(col("payload_value"), "null")),
            "}}",
        ]  # fmt: skip
    else:
        parts = [
            '{"subscription_id":', _quoted(col("subscription_id")),
            ',"usage_timestamp":', col("usage_timestamp").fill_null("null"),
            ',"deduplication_id":', _quoted(col("deduplication_id")),
            ',"properties":', col("properties"),
            "}",
        ]  # fmt: skip
    exprs = [pl.lit(p) if isinstance(p, str) else p for p in parts]
    return frame.select(pl.concat_str(exprs).alias("line"))


def _write_csv(frame: pl.DataFrame, **options: Any) -> bytes:
    buffer = io.BytesIO()
    frame.write_csv(buffer, **options)
    return buffer.getvalue()


def serialize(frame: pl.DataFrame, layout: Layout, fmt: str) -> bytes:
    """A file's bytes in `fmt` (csv / json / jsonl / ndjson, each optionally .gz); `_` columns left out."""
    base, gz = (fmt.removesuffix(".gz"), True) if fmt.endswith(".gz") else (fmt, False)
    visible = frame.select(COLUMNS[layout])
    if base == "csv":
        data = _write_csv(visible)
    elif base in ("json", "jsonl", "ndjson"):
        lines = _json_lines(visible, layout)
        if base == "json":
            not_last = pl.int_range(pl.len()) < pl.len() - 1
            lines = lines.select(pl.when(not_last).then(pl.col("line") + ",").otherwise(pl.col("line")))
        # Already JSON text: the CSV writer with no quoting is just a fast, multi-threaded line writer.
        data = _write_csv(lines, include_header=False, quote_style="never")
        if base == "json":
            data = b"[" + data + b"]\n"
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    # mtime=0 keeps the gzip bytes deterministic for a seed.
    return gzip.compress(data, compresslevel=6, mtime=0) if gz else data


def generate_usage_file(
    *,
    layout: Layout,
    fmt: str,
    rows: int,
    arrival: datetime,
    seed: int = 0,
    error_rate: float = 0.0,
    duplicate_rate: float = 0.0,
    customers: Sequence[str] = DEFAULT_CUSTOMERS,
    subscriptions: Sequence[str] = DEFAULT_SUBSCRIPTIONS,
    event_names: Sequence[str] = DEFAULT_EVENT_NAMES,
    features: Sequence[str] = DEFAULT_FEATURES,
    time_span: timedelta = timedelta(days=1),
    window_end: datetime | None = None,
    key_hint: str = "",
) -> bytes:
    """A synthetic usage file's bytes: generate_usage_frame's rows serialized as `fmt` (see FORMATS)."""
    frame = generate_usage_frame(
        layout=layout, rows=rows, arrival=arrival, seed=seed, error_rate=error_rate,
        duplicate_rate=duplicate_rate, customers=customers, subscriptions=subscriptions,
        event_names=event_names, features=features, time_span=time_span, window_end=window_end,
        key_hint=key_hint,
    )  # fmt: skip
    return serialize(frame, layout, fmt)


def write_files(target: str, files: Mapping[str, bytes], s3_client: Any = None) -> list[str]:
    """Write each relative key under a local folder or `s3://bucket/prefix` (bucket created if missing).

    Returns the local paths, or the full S3 keys (prefix included, as in `ingested_files.file_key`).
    """
    if not target.startswith("s3://"):
        paths = []
        for key, data in files.items():
            path = Path(target) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(str(path))
        return paths
    # Imported here: the S3 helpers pull in boto3 and moto, which local targets do not need.
    from usage_pipeline.local_s3 import ensure_bucket
    from usage_pipeline.local_s3 import s3_client as default_client

    bucket, _, prefix = target.removeprefix("s3://").partition("/")
    client = s3_client or default_client()
    ensure_bucket(client, bucket)
    keys = []
    for key, data in files.items():
        full = f"{prefix.rstrip('/')}/{key}" if prefix.strip("/") else key
        client.put_object(Bucket=bucket, Key=full, Body=data)
        keys.append(full)
    return keys


# The bundled catalog's demo ids (see the top comment of usage_pipeline/catalog/example.yaml).
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
    """
    day_end = arrival.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    common = {"arrival": arrival, "window_end": day_end, "time_span": timedelta(days=1)}
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
    failed = STATUS_FAILED
    files.update({
        "edge-cases/corrupt.csv.gz": DemoFile(b"\x1f\x8b\x08\x00" + garbage, failed, REASON_UNREADABLE),
        "edge-cases/garbage.json": DemoFile(garbage, failed, REASON_UNREADABLE),
        "edge-cases/unknown-layout.csv": DemoFile(b"a,b,c\n1,2,3\n4,5,6\n", failed, REASON_UNKNOWN_LAYOUT),
        "edge-cases/missing-column.csv": DemoFile(
            _write_csv(no_customer), failed, missing_column("payload_stripe_customer_id")
        ),
        "edge-cases/empty.csv": DemoFile(b"", STATUS_EMPTY),
        "edge-cases/header-only.csv": DemoFile(header_only, STATUS_EMPTY),
        "edge-cases/empty-array.json": DemoFile(b"[]", STATUS_EMPTY),
        "edge-cases/notes.txt": DemoFile(b"usage notes, not a usage file\n", failed, REASON_UNSUPPORTED),
    })  # fmt: skip
    return files


def demo_files(arrival: datetime, seed: int = 7) -> dict[str, bytes]:
    """The bytes of the `usage-pipeline demo` files by relative key (a few thousand rows in all)."""
    return {key: demo.data for key, demo in demo_set(arrival, seed).items()}
