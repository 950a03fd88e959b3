"""Synthetic usage files (Stripe and Chargebee layouts) for the demo, the benchmarks and the tests."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from usage_pipeline.ingest.model import Layout

FORMATS: tuple[str, ...] = ("csv", "json", "jsonl", "csv.gz", "json.gz", "jsonl.gz")
DEFAULT_CUSTOMERS: tuple[str, ...] = ("cus_001", "cus_002")
DEFAULT_SUBSCRIPTIONS: tuple[str, ...] = ("sub_daily_001",)
DEFAULT_EVENT_NAMES: tuple[str, ...] = ("api_call", "llm_tokens")

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
    labels = pl.Series([kinds[j % len(kinds)] for j in range(n_err)], dtype=pl.String)
    return none.scatter(rows, labels)


def _stripe_columns(n: int, tag: str, seed: int, end_s: int, span_s: int, arrival_s: int, **lists: Any) -> list:
    h1, h2, kind = _rand(n, seed, 1), _rand(n, seed, 2), pl.col("_kind")
    old, future = _bad_times(h1, arrival_s)
    i = pl.int_range(0, n).cast(pl.String)
    ts = pl.lit(end_s - span_s, pl.Int64) + (h1 % span_s).cast(pl.Int64)
    identifier = pl.lit(f"evt_{tag}_") + i
    return [
        pl.when(kind == "long_identifier").then(identifier + "_" + "x" * 100).otherwise(identifier)
        .alias("identifier"),
        pl.when(kind == "empty_timestamp").then(None)
        .when(kind == "fractional_timestamp").then(ts.cast(pl.String) + ".5")
        .when(kind == "milliseconds_timestamp").then((ts * 1000).cast(pl.String))
        .when(kind == "too_old").then(old.cast(pl.String))
        .when(kind == "in_future").then(future.cast(pl.String))
        .otherwise(ts.cast(pl.String)).alias("timestamp"),
        _pick(lists["event_names"], h2).alias("event_name"),
        pl.when(kind == "empty_customer").then(None)
        .otherwise(_pick(lists["customers"], h2 // (1 << 16))).alias("payload_stripe_customer_id"),
        pl.when(kind == "non_numeric_value").then(pl.lit("twelve"))
        .otherwise((1 + (h2 // (1 << 32)) % 1000).cast(pl.String)).alias("payload_value"),
    ]  # fmt: skip


def _chargebee_columns(n: int, tag: str, seed: int, end_s: int, span_s: int, arrival_s: int, **lists: Any) -> list:
    h1, h2, kind = _rand(n, seed, 1), _rand(n, seed, 2), pl.col("_kind")
    old, future = _bad_times(h1, arrival_s)
    # Milliseconds in [end - span, end - 1 s].
    ts = pl.lit((end_s - span_s) * 1000, pl.Int64) + (h1 % max(span_s * 1000 - 999, 1)).cast(pl.Int64)
    feature, amount = (h2 // (1 << 16)) % 3, (h2 // (1 << 32)) % 5000
    properties = (
        pl.when(feature == 0).then(pl.format('{{"feature":"storage","gb":{}}}', (amount / 10).round(1)))
        .when(feature == 1).then(pl.format('{{"feature":"seats","user_id":"u_{}"}}', amount % 50))
        .otherwise(pl.format('{{"feature":"api","value":{}}}', 1 + amount % 1000))
    )  # fmt: skip
    return [
        pl.when(kind == "empty_subscription").then(None)
        .otherwise(_pick(lists["subscriptions"], h2)).alias("subscription_id"),
        pl.when(kind == "empty_timestamp").then(None)
        .when(kind == "fractional_timestamp").then(ts.cast(pl.String) + ".5")
        .when(kind == "seconds_timestamp").then((ts // 1000).cast(pl.String))
        .when(kind == "too_old").then((old * 1000).cast(pl.String))
        .when(kind == "in_future").then((future * 1000).cast(pl.String))
        .otherwise(ts.cast(pl.String)).alias("usage_timestamp"),
        (pl.lit(f"dd_{tag}_") + pl.int_range(0, n).cast(pl.String)).alias("deduplication_id"),
        pl.when(kind == "properties_array").then(pl.lit('["storage",1]'))
        .when(kind == "properties_string").then(pl.lit('"storage"'))
        .when(kind == "large_properties").then(pl.lit('{"feature":"storage","gb":1,"note":"' + "x" * 1100 + '"}'))
        .otherwise(properties).alias("properties"),
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
    time_span: timedelta = timedelta(days=1),
    window_end: datetime | None = None,
    key_hint: str = "",
) -> pl.DataFrame:
    """The rows of a synthetic file as text columns, plus `_error_code` and `_duplicate` (the truth).

    Good event times fall in [window_end - time_span, window_end - 1 s] (window_end defaults to arrival);
    bad times are placed relative to `arrival`. Exactly round(rows * error_rate) rows are bad and
    round(rows * duplicate_rate) rows repeat the dedup key (the whole row) of an earlier good row.
    With no errors and no duplicates, row i depends only on (seed, key_hint, i).
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
    build = _stripe_columns if layout == "stripe" else _chargebee_columns
    end_s = int((window_end or arrival).timestamp())
    span_s = max(int(time_span.total_seconds()), 1)
    columns = build(
        n_orig, _tag(seed, key_hint), seed, end_s, span_s, int(arrival.timestamp()),
        customers=customers, subscriptions=subscriptions, event_names=event_names,
    )  # fmt: skip
    frame = (
        pl.DataFrame({"_kind": _error_kinds(n_orig, n_err, list(kinds), seed)})
        .select(
            *columns,
            pl.col("_kind").replace_strict(kinds, default=None, return_dtype=pl.String).alias("_error_code"),
            pl.lit(False).alias("_duplicate"),
        )
    )
    if n_dup == 0:
        return frame
    # Each duplicate copies a random good row and lands at a random place after it.
    good = frame.select(pl.int_range(0, n_orig).alias("i"), "_error_code").filter(pl.col("_error_code").is_null())
    sources = good.get_column("i").sample(n_dup, with_replacement=True, seed=seed + 1)
    after = pl.Series(sources).cast(pl.UInt64)
    place = pl.select(
        (after + 1 + _rand(n_dup, seed, 3) % (n_orig - after)).cast(pl.Int64) * 2 - 1
    ).to_series()
    copies = frame.gather(sources).with_columns(pl.lit(True).alias("_duplicate"), place.alias("_order"))
    return (
        pl.concat([frame.with_columns((pl.int_range(0, n_orig) * 2).alias("_order")), copies])
        .sort("_order", maintain_order=True)
        .drop("_order")
    )


def _quoted(expr: pl.Expr, null: str = '""') -> pl.Expr:
    escaped = expr.str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True)
    return pl.when(expr.is_null()).then(pl.lit(null)).otherwise(pl.lit('"') + escaped + '"')


def _json_lines(frame: pl.DataFrame, layout: Layout) -> pl.Series:
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
    return frame.select(pl.concat_str(exprs).alias("line")).to_series()


def serialize(frame: pl.DataFrame, layout: Layout, fmt: str) -> bytes:
    """The bytes of a file in `fmt` (csv / json / jsonl, optionally .gz); `_`-prefixed columns are left out."""
    base, gz = (fmt.removesuffix(".gz"), True) if fmt.endswith(".gz") else (fmt, False)
    visible = frame.select(COLUMNS[layout])
    if base == "csv":
        data = visible.write_csv().encode()
    elif base in ("json", "jsonl", "ndjson"):
        lines = _json_lines(visible, layout)
        if base == "json":
            data = ("[" + lines.str.join(",\n").item() + "]\n").encode() if len(lines) else b"[]"
        else:
            data = (lines.str.join("\n").item() + "\n").encode() if len(lines) else b""
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    # mtime=0 keeps gzip output deterministic for a seed.
    return gzip.compress(data, compresslevel=6, mtime=0) if gz else data


def generate_usage_file(*, layout: Layout, fmt: str, rows: int, arrival: datetime, **options: Any) -> bytes:
    """A synthetic usage file's bytes; `options` are generate_usage_frame's keywords (seed, rates, ids…)."""
    return serialize(generate_usage_frame(layout=layout, rows=rows, arrival=arrival, **options), layout, fmt)


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
