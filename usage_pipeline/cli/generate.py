"""Synthetic usage files (Stripe and Chargebee layouts) for the demo, the benchmarks and the tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from usage_pipeline.core.ingest.model import Layout

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
    """What the column builders need: row count, id prefix, seed, time window, ids and the bad rows."""

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
    kinds: frozenset[str]  # the error kinds present: branches for absent kinds are left out (speed)

    def by_kind(self, cases: Mapping[str, Any], default: Any) -> pl.Expr:
        """`default`, replaced on the rows of each present error kind by its case (None = empty field)."""
        expr: Any = pl
        for kind, value in cases.items():
            if kind in self.kinds:
                expr = expr.when(pl.col("_kind") == kind).then(value)
        return default if expr is pl else expr.otherwise(default)


def _timestamp(r: _Rows, good: pl.Expr, unit: int, wrong_unit: tuple[str, int | float]) -> pl.Expr:
    """Epoch text in `unit` per second; the bad kinds get a wrong unit, a fraction, or a bad time."""
    h = _rand(r.n, r.seed, 1)
    old, future = _bad_times(h, r.arrival_s)
    wrong, factor = wrong_unit
    number = r.by_kind(
        {wrong: (good * factor).cast(pl.Int64), "too_old": old * unit, "in_future": future * unit}, good
    )
    fraction = r.by_kind({"fractional_timestamp": pl.lit(".5")}, pl.lit(""))
    return r.by_kind({"empty_timestamp": None}, number.cast(pl.String) + fraction)


def _stripe_columns(r: _Rows) -> list[pl.Expr]:
    h1, h2 = _rand(r.n, r.seed, 1), _rand(r.n, r.seed, 2)
    ts = pl.lit(r.start_s, pl.Int64) + (h1 % r.span_s).cast(pl.Int64)
    identifier = pl.lit(f"evt_{r.tag}_") + pl.int_range(0, r.n).cast(pl.String)
    value = (1 + (h2 // (1 << 32)) % 1000).cast(pl.String)
    return [
        (identifier + r.by_kind({"long_identifier": pl.lit("_" + "x" * 100)}, pl.lit(""))).alias(
            "identifier"
        ),
        _timestamp(r, ts, 1, ("milliseconds_timestamp", 1000)).alias("timestamp"),
        _pick(r.event_names, h2).alias("event_name"),
        r.by_kind({"empty_customer": None}, _pick(r.customers, h2 // (1 << 16))).alias(
            "payload_stripe_customer_id"
        ),
        r.by_kind({"non_numeric_value": pl.lit("twelve")}, value).alias("payload_value"),
    ]


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
    h1, h2 = _rand(r.n, r.seed, 1), _rand(r.n, r.seed, 2)
    # Milliseconds in [start, start + span - 1 s].
    ts = pl.lit(r.start_s * 1000, pl.Int64) + (h1 % max(r.span_s * 1000 - 999, 1)).cast(pl.Int64)
    bad_properties = {
        "properties_array": pl.lit('["storage",1]'),
        "properties_string": pl.lit('"storage"'),
        "large_properties": pl.lit('{"feature":"storage","gb":1,"note":"' + "x" * 1100 + '"}'),
    }
    return [
        r.by_kind({"empty_subscription": None}, _pick(r.subscriptions, h2)).alias("subscription_id"),
        _timestamp(r, ts, 1000, ("seconds_timestamp", 0.001)).alias("usage_timestamp"),
        (pl.lit(f"dd_{r.tag}_") + pl.int_range(0, r.n).cast(pl.String)).alias("deduplication_id"),
        r.by_kind(bad_properties, _properties(r.features, h2)).alias("properties"),
    ]


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
    bad = _error_kinds(n_orig, n_err, list(kinds), seed)
    spec = _Rows(
        n=n_orig, tag=_tag(seed, key_hint), seed=seed,
        start_s=int((window_end or arrival).timestamp()) - span_s, span_s=span_s,
        arrival_s=int(arrival.timestamp()), customers=customers, subscriptions=subscriptions,
        event_names=event_names, features=features, kinds=frozenset(bad.drop_nulls().unique()),
    )  # fmt: skip
    columns = _stripe_columns(spec) if layout == "stripe" else _chargebee_columns(spec)
    frame = pl.DataFrame({"_kind": bad}).select(
        *columns,
        pl.col("_kind").replace_strict(kinds, default=None, return_dtype=pl.String).alias("_error_code"),
        pl.lit(False).alias("_duplicate"),
    )
    if n_dup == 0:
        return frame
    # Each duplicate copies a random good row and lands at a random place after it: order the row
    # numbers by position (originals at even places, copies at odd ones) and gather once.
    good = pl.int_range(0, n_orig, eager=True).filter(frame.get_column("_error_code").is_null())
    sources = good.sample(n_dup, with_replacement=True, seed=seed + 1)
    after = sources.cast(pl.UInt64)
    place = pl.select((after + 1 + _rand(n_dup, seed, 3) % (n_orig - after)).cast(pl.Int64) * 2 - 1)
    order = pl.DataFrame(
        {
            "row": pl.concat([pl.int_range(0, n_orig, eager=True), sources]),
            "place": pl.concat([pl.int_range(0, n_orig, eager=True) * 2, place.to_series()]),
        }
    ).with_columns(copy=pl.int_range(pl.len()) >= n_orig)
    order = order.sort("place", maintain_order=True)
    return frame.gather(order.get_column("row")).with_columns(_duplicate=order.get_column("copy"))


def _quoted(frame: pl.DataFrame, column: str, null: str = '""') -> pl.Expr:
    """The column as JSON strings; only a column with quotes, backslashes or controls pays for json.dumps."""
    expr = pl.col(column)
    if frame.select(expr.str.contains(r'["\\\x00-\x1f]').any()).item():
        text = expr.map_elements(json.dumps, return_dtype=pl.String)
    else:
        text = pl.lit('"') + expr + '"'
    return pl.when(expr.is_null()).then(pl.lit(null)).otherwise(text)


def _json_lines(frame: pl.DataFrame, layout: Layout) -> pl.DataFrame:
    """One compact JSON object per row; Stripe rows carry the nested `payload` object."""
    col = pl.col

    def quoted(column: str, null: str = '""') -> pl.Expr:
        return _quoted(frame, column, null)

    if layout == "stripe":
        value = pl.when(col("payload_value").str.contains(r"^-?[0-9]+(\.[0-9]+)?$"))
        parts = [
            '{"identifier":', quoted("identifier"),
            ',"timestamp":', col("timestamp").fill_null("null"),
            ',"event_name":', quoted("event_name"),
            ',"payload":{"stripe_customer_id":', quoted("payload_stripe_customer_id"),
            ',"value":', value.then(col("payload_value")).otherwise(quoted("payload_value", "null")),
            "}}",
        ]  # fmt: skip
    else:
        parts = [
            '{"subscription_id":', quoted("subscription_id"),
            ',"usage_timestamp":', col("usage_timestamp").fill_null("null"),
            ',"deduplication_id":', quoted("deduplication_id"),
            ',"properties":', col("properties"),
            "}",
        ]  # fmt: skip
    exprs = [pl.lit(p) if isinstance(p, str) else p for p in parts]
    return frame.select(pl.concat_str(exprs).alias("line"))


def write_csv(frame: pl.DataFrame, **options: Any) -> bytes:
    buffer = io.BytesIO()
    frame.write_csv(buffer, **options)
    return buffer.getvalue()


def serialize(frame: pl.DataFrame, layout: Layout, fmt: str) -> bytes:
    """A file's bytes in `fmt` (csv / json / jsonl / ndjson, each optionally .gz); `_` columns left out."""
    base, gz = (fmt.removesuffix(".gz"), True) if fmt.endswith(".gz") else (fmt, False)
    visible = frame.select(COLUMNS[layout])
    if base == "csv":
        data = write_csv(visible)
    elif base in ("json", "jsonl", "ndjson"):
        lines = _json_lines(visible, layout)
        if base == "json":
            not_last = pl.int_range(pl.len()) < pl.len() - 1
            lines = lines.select(pl.when(not_last).then(pl.col("line") + ",").otherwise(pl.col("line")))
        # Already JSON text: the CSV writer with no quoting is just a fast, multi-threaded line writer.
        data = write_csv(lines, include_header=False, quote_style="never")
        if base == "json":
            data = b"[" + data + b"]\n"
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    # mtime=0 keeps the gzip bytes deterministic for a seed.
    return gzip.compress(data, compresslevel=6, mtime=0) if gz else data


def generate_usage_file(*, layout: Layout, fmt: str, **options: Any) -> bytes:
    """A synthetic usage file's bytes: the rows of generate_usage_frame(layout=layout, **options) (the same
    keyword options), serialized as `fmt` (see FORMATS)."""
    return serialize(generate_usage_frame(layout=layout, **options), layout, fmt)


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
    from usage_pipeline.cli.local_s3 import ensure_bucket
    from usage_pipeline.core.ingest.s3 import s3_client as default_client

    bucket, _, prefix = target.removeprefix("s3://").partition("/")
    client = s3_client or default_client()
    ensure_bucket(client, bucket)
    keys = []
    for key, data in files.items():
        full = f"{prefix.rstrip('/')}/{key}" if prefix.strip("/") else key
        client.put_object(Bucket=bucket, Key=full, Body=data)
        keys.append(full)
    return keys
