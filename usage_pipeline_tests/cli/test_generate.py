"""The synthetic usage-file generator: formats, determinism, error and duplicate rates, the demo set."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from datetime import UTC, datetime, timedelta

import boto3
import polars as pl
import pytest
import yaml
from moto import mock_aws

from usage_pipeline.cli.demo_data import (
    DEMO_CUSTOMERS,
    DEMO_EVENT_NAMES,
    DEMO_FEATURES,
    DEMO_SUBSCRIPTIONS,
    demo_files,
    demo_set,
)
from usage_pipeline.cli.generate import (
    COLUMNS,
    DEDUP_KEYS,
    FORMATS,
    generate_usage_file,
    generate_usage_frame,
    write_files,
)
from usage_pipeline.core.ingest.model import ROW_ERROR_CODES
from usage_pipeline.settings import BUNDLED_CATALOG

ARRIVAL = datetime(2026, 11, 5, 14, 30, tzinfo=UTC)
ARRIVAL_S = int(ARRIVAL.timestamp())
MAX_AGE_S = 35 * 86_400
SKEW_S = 5 * 60


def read_back(data: bytes, fmt: str) -> pl.DataFrame:
    """Read a generated file back as text columns named like the CSV ones (nested JSON payload flattened)."""
    if fmt.endswith(".gz"):
        data, fmt = gzip.decompress(data), fmt.removesuffix(".gz")
    if fmt == "csv":
        return pl.read_csv(io.BytesIO(data), infer_schema=False)
    records = json.loads(data) if fmt == "json" else [json.loads(line) for line in data.splitlines()]
    flat = []
    for record in records:
        payload = record.pop("payload", None)
        if payload is not None:
            record |= {f"payload_{k}": v for k, v in payload.items()}
        if "properties" in record:
            record["properties"] = json.dumps(record["properties"], separators=(",", ":"))
        # JSON writes an empty id as "" where CSV has an empty cell (read as null): both mean "missing".
        flat.append({k: None if v in (None, "") else str(v) for k, v in record.items()})
    return pl.DataFrame(flat, schema=dict.fromkeys(flat[0], pl.String) if flat else None)


def spec_error_codes(frame: pl.DataFrame, layout: str, arrival_s: int = ARRIVAL_S) -> pl.Series:
    """An independent reading of SPEC 3 on text columns: the first code that applies, or null."""
    col = pl.col
    if layout == "stripe":
        ts_col, unit, wrong_unit = "timestamp", 1, col("timestamp").cast(pl.Int64, strict=False) >= 10**11
        missing = col("payload_stripe_customer_id").is_null() | col("timestamp").is_null()
        rest = [
            (col("identifier").str.len_chars() > 100, "invalid_identifier"),
            (col("payload_value").cast(pl.Float64, strict=False).is_null(), "invalid_value"),
        ]
    else:
        ts_col, unit = "usage_timestamp", 1000
        wrong_unit = col("usage_timestamp").cast(pl.Int64, strict=False) < 10**11
        missing = col("subscription_id").is_null() | col("usage_timestamp").is_null()
        is_object = col("properties").map_elements(
            lambda text: isinstance(json.loads(text), dict), return_dtype=pl.Boolean
        )
        rest = [
            (~is_object, "invalid_properties"),
            (col("properties").str.len_bytes() > 1024, "properties_too_large"),
        ]
    ts = col(ts_col).cast(pl.Int64, strict=False)
    rules = [
        (missing, "missing_required_field"),
        (~col(ts_col).str.contains(r"^[0-9]+$") | wrong_unit, "invalid_timestamp"),
        (ts < (arrival_s - MAX_AGE_S) * unit, "timestamp_too_far_in_past"),
        (ts > (arrival_s + SKEW_S) * unit, "timestamp_in_future"),
        *rest,
    ]
    expr = pl.when(rules[0][0]).then(pl.lit(rules[0][1]))
    for condition, code in rules[1:]:
        expr = expr.when(condition).then(pl.lit(code))
    return frame.select(expr.otherwise(None).alias("code")).to_series()


@pytest.mark.parametrize("layout", ["stripe", "chargebee"])
def test_same_seed_gives_same_bytes_and_another_seed_other_events(layout: str) -> None:
    options = {"layout": layout, "fmt": "csv.gz", "rows": 2_000, "arrival": ARRIVAL, "error_rate": 0.05}
    first = generate_usage_file(**options, seed=3, duplicate_rate=0.05)
    assert first == generate_usage_file(**options, seed=3, duplicate_rate=0.05)
    other = read_back(generate_usage_file(**options, seed=4, duplicate_rate=0.05), "csv.gz")
    keys = read_back(first, "csv.gz").select(DEDUP_KEYS[layout]).unique()
    assert keys.join(other.select(DEDUP_KEYS[layout]), on=DEDUP_KEYS[layout]).height == 0


@pytest.mark.parametrize("layout", ["stripe", "chargebee"])
@pytest.mark.parametrize("fmt", [*FORMATS, "ndjson"])
def test_every_format_reads_back_with_the_same_events(layout: str, fmt: str) -> None:
    options = {"layout": layout, "rows": 300, "arrival": ARRIVAL, "seed": 11, "error_rate": 0.1}
    expected = generate_usage_frame(**options).select(COLUMNS[layout])
    got = read_back(generate_usage_file(fmt=fmt, **options), fmt).select(COLUMNS[layout])
    assert got.height == 300
    assert got.equals(expected)


def test_stripe_json_nests_the_payload_and_csv_flattens_it() -> None:
    options = {"layout": "stripe", "rows": 5, "arrival": ARRIVAL}
    record = json.loads(generate_usage_file(fmt="jsonl", **options).splitlines()[0])
    assert set(record) == {"identifier", "timestamp", "event_name", "payload"}
    assert set(record["payload"]) == {"stripe_customer_id", "value"}
    assert isinstance(record["timestamp"], int) and isinstance(record["payload"]["value"], int)
    header = generate_usage_file(fmt="csv", **options).splitlines()[0].decode()
    assert header == "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value"


@pytest.mark.parametrize(
    ("layout", "ts_col", "unit"), [("stripe", "timestamp", 1), ("chargebee", "usage_timestamp", 1000)]
)
def test_event_times_are_in_the_window_in_the_layouts_unit(layout: str, ts_col: str, unit: int) -> None:
    span = timedelta(hours=6)
    frame = read_back(
        generate_usage_file(layout=layout, fmt="csv", rows=5_000, arrival=ARRIVAL, time_span=span), "csv"
    )
    ts = frame.get_column(ts_col).cast(pl.Int64)
    assert ts.min() >= (ARRIVAL_S - span.total_seconds()) * unit
    assert ts.max() <= (ARRIVAL_S - 1) * unit
    # Uniform over the window: both halves are well filled.
    assert (ts < (ARRIVAL_S - span.total_seconds() / 2) * unit).mean() == pytest.approx(0.5, abs=0.05)
    if layout == "stripe":
        assert ts.max() < 10**11
    else:
        assert ts.min() >= 10**11


@pytest.mark.parametrize("layout", ["stripe", "chargebee"])
def test_error_rate_makes_that_many_rows_invalid_by_the_spec_rules(layout: str) -> None:
    frame = read_back(
        generate_usage_file(layout=layout, fmt="csv", rows=4_000, arrival=ARRIVAL, seed=5, error_rate=0.05),
        "csv",
    )
    codes = spec_error_codes(frame, layout)
    assert codes.is_not_null().sum() == 200
    layout_codes = {
        "stripe": {"invalid_identifier", "invalid_value"},
        "chargebee": {"invalid_properties", "properties_too_large"},
    }
    # Every code but malformed_record: the generator writes well-formed records (the demo's ragged file and
    # the bad-input corpus cover malformed ones).
    assert set(codes.drop_nulls()) == set(ROW_ERROR_CODES) - layout_codes[
        "chargebee" if layout == "stripe" else "stripe"
    ] - {"malformed_record"}
    # The generator's own labels agree with the rules row by row.
    truth = generate_usage_frame(layout=layout, rows=4_000, arrival=ARRIVAL, seed=5, error_rate=0.05)
    assert codes.to_list() == truth.get_column("_error_code").to_list()


@pytest.mark.parametrize("layout", ["stripe", "chargebee"])
def test_duplicate_rate_repeats_earlier_good_keys(layout: str) -> None:
    options = {"layout": layout, "rows": 5_000, "arrival": ARRIVAL, "seed": 9, "error_rate": 0.02}
    truth = generate_usage_frame(**options, duplicate_rate=0.03)
    frame = read_back(generate_usage_file(fmt="jsonl", **options, duplicate_rate=0.03), "jsonl")
    later = ~frame.select(pl.struct(DEDUP_KEYS[layout]).is_first_distinct()).to_series()
    assert later.sum() == 150
    assert later.to_list() == truth.get_column("_duplicate").to_list()
    assert truth.filter(pl.col("_duplicate"))["_error_code"].null_count() == 150
    # Without duplicate_rate every key is unique.
    plain = read_back(generate_usage_file(fmt="csv", **options), "csv")
    assert plain.select(pl.struct(DEDUP_KEYS[layout]).n_unique()).item() == 5_000


def test_files_with_other_key_hints_share_no_ids_and_a_smaller_file_is_a_prefix() -> None:
    options = {"layout": "chargebee", "fmt": "csv", "arrival": ARRIVAL, "seed": 1}
    big = read_back(generate_usage_file(rows=100, key_hint="a.csv", **options), "csv")
    small = read_back(generate_usage_file(rows=40, key_hint="a.csv", **options), "csv")
    other = read_back(generate_usage_file(rows=100, key_hint="b.csv", **options), "csv")
    assert small.equals(big.head(40))
    assert not set(big["deduplication_id"]) & set(other["deduplication_id"])


def test_rejects_unknown_layout_format_and_rates() -> None:
    with pytest.raises(ValueError, match="layout"):
        generate_usage_file(layout="paddle", fmt="csv", rows=1, arrival=ARRIVAL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="format"):
        generate_usage_file(layout="stripe", fmt="xlsx", rows=1, arrival=ARRIVAL)
    with pytest.raises(ValueError, match="rate"):
        generate_usage_file(layout="stripe", fmt="csv", rows=1, arrival=ARRIVAL, error_rate=1.5)


def test_demo_set_covers_every_case_the_demo_shows() -> None:
    demo = demo_set(ARRIVAL)
    assert demo_files(ARRIVAL) == {key: d.data for key, d in demo.items()}
    usage = {k: d for k, d in demo.items() if not k.startswith("edge-cases/")}
    for layout in ("stripe", "chargebee"):
        formats = {k.rsplit("/", 1)[-1].split(".", 1)[1] for k in usage if k.startswith(layout)}
        assert {"csv", "json", "jsonl", "csv.gz"} <= formats
    assert any(k.count("/") >= 3 and "/2026/11/04/" in k for k in demo)
    assert sum(d.rows_total for d in demo.values()) < 5_000
    # Bad rows: every SPEC 3 code, checked on the bytes.
    seen: set[str] = set()
    for key, d in usage.items():
        layout = key.split("/", 1)[0]
        fmt = key.rsplit("/", 1)[-1].split(".", 1)[1]
        frame = read_back(d.data, fmt)
        codes = spec_error_codes(frame, layout).drop_nulls().value_counts()
        assert dict(codes.iter_rows()) == dict(d.errors), key
        seen |= set(d.errors)
        good = frame.filter(spec_error_codes(frame, layout).is_null())
        ts = good.get_column("timestamp" if layout == "stripe" else "usage_timestamp").cast(pl.Int64)
        unit = 1 if layout == "stripe" else 1000
        day_end = int(datetime(2026, 11, 5, tzinfo=UTC).timestamp())
        assert ts.min() >= (day_end - 86_400) * unit and ts.max() < day_end * unit, key
    seen |= set(demo["edge-cases/ragged-lines.csv"].errors)
    assert seen == set(ROW_ERROR_CODES)
    # Duplicates within a file and across files (a later file re-sends rows of an earlier one).
    assert demo["stripe/usage-a.csv"].rows_duplicate > 0 and demo["chargebee/usage-a.csv"].rows_duplicate > 0
    for layout, original, resent in [
        ("stripe", "stripe/usage-a.csv", "stripe/usage-z-resent.jsonl"),
        ("chargebee", "chargebee/usage-a.csv", "chargebee/usage-z-resent.csv"),
    ]:
        first = read_back(demo[original].data, "csv").select(DEDUP_KEYS[layout])
        again = read_back(demo[resent].data, resent.split(".", 1)[1]).select(DEDUP_KEYS[layout])
        assert again.height > 0 and again.join(first.unique(), on=DEDUP_KEYS[layout]).height == again.height


def test_demo_files_are_the_same_bytes_all_day_and_valid_for_an_upload_at_any_time_of_it() -> None:
    """A second `usage-pipeline demo` the same day uploads the same versions (ETags), so ingests nothing."""
    first, last = datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 11, 5, 23, 59, 59, tzinfo=UTC)
    assert demo_files(first) == demo_files(ARRIVAL) == demo_files(last)
    assert demo_files(last + timedelta(seconds=1)) != demo_files(last)
    demo = demo_set(ARRIVAL)
    for upload in (first, last + timedelta(seconds=1)):  # S3 LastModified: any time that day
        for key, d in demo.items():
            if key.startswith("edge-cases/"):
                continue
            frame = read_back(d.data, key.rsplit("/", 1)[-1].split(".", 1)[1])
            codes = spec_error_codes(frame, key.split("/", 1)[0], int(upload.timestamp()))
            assert dict(codes.drop_nulls().value_counts().iter_rows()) == dict(d.errors), (key, upload)


def test_demo_set_has_each_broken_and_empty_file() -> None:
    demo = demo_set(ARRIVAL)
    with pytest.raises((OSError, EOFError, zlib.error)):
        gzip.decompress(demo["edge-cases/corrupt.csv.gz"].data)
    with pytest.raises(ValueError):
        json.loads(demo["edge-cases/garbage.json"].data)
    assert demo["edge-cases/unknown-layout.csv"].data.startswith(b"a,b,c\n")
    header = demo["edge-cases/missing-column.csv"].data.splitlines()[0].decode().split(",")
    assert "payload_stripe_customer_id" not in header and "identifier" in header and "timestamp" in header
    assert demo["edge-cases/missing-column.csv"].failed_reason == "missing_column:payload_stripe_customer_id"
    assert demo["edge-cases/empty.csv"].data == b""
    assert demo["edge-cases/header-only.csv"].data.count(b"\n") == 1
    assert demo["edge-cases/empty-array.json"].data == b"[]"
    unsupported = [
        k for k in demo if not k.removesuffix(".gz").endswith((".csv", ".json", ".jsonl", ".ndjson"))
    ]
    assert unsupported == ["edge-cases/notes.txt"]
    assert demo["edge-cases/notes.txt"].failed_reason == "unsupported_file"


def test_demo_ids_are_the_bundled_catalogs() -> None:
    catalog = yaml.safe_load(BUNDLED_CATALOG.read_text())
    subscriptions = {s["id"]: s for s in catalog["subscriptions"]}
    customers = {s["customer_id"] for s in subscriptions.values()}
    assert set(DEMO_CUSTOMERS) <= customers
    assert set(DEMO_SUBSCRIPTIONS) <= set(subscriptions)
    assert all(subscriptions[s]["billing_period_unit"] == "day" for s in DEMO_SUBSCRIPTIONS)
    meters = catalog["meters"]
    assert set(DEMO_EVENT_NAMES) <= {m.get("event_name") for m in meters}
    assert set(DEMO_FEATURES) <= {m.get("filters", {}).get("feature") for m in meters}


def test_write_files_to_a_local_folder(tmp_path) -> None:
    files = {"a.csv": b"x", "2026/11/04/b.jsonl": b"y"}
    paths = write_files(str(tmp_path / "out"), files)
    assert paths == [str(tmp_path / "out" / "a.csv"), str(tmp_path / "out" / "2026/11/04/b.jsonl")]
    assert (tmp_path / "out" / "2026" / "11" / "04" / "b.jsonl").read_bytes() == b"y"


def test_write_files_to_s3_creates_the_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with mock_aws():
        client = boto3.client("s3")
        keys = write_files("s3://usage-events/incoming/", {"a.csv": b"x", "sub/b.json": b"[]"}, client)
        assert keys == ["incoming/a.csv", "incoming/sub/b.json"]
        assert client.get_object(Bucket="usage-events", Key="incoming/sub/b.json")["Body"].read() == b"[]"
        # An existing bucket is reused; no prefix puts keys at the bucket's root.
        assert write_files("s3://usage-events", {"c.csv": b"z"}) == ["c.csv"]
        assert client.get_object(Bucket="usage-events", Key="c.csv")["Body"].read() == b"z"
