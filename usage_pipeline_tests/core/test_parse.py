"""File classification and parsing: formats, gzip, empty files, layouts and file-level failures."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import polars as pl
import pytest

from usage_pipeline.core.ingest.files import classify_file
from usage_pipeline.core.ingest.model import EVENT_SCHEMA, FileVersion, ParsedFile, ValidationLimits
from usage_pipeline.core.ingest.parse import parse_file

ARRIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_S = int(ARRIVED.timestamp())
NOW_MS = NOW_S * 1000


def stripe_record(identifier: str, ts: int, customer: str) -> dict:
    return {
        "identifier": identifier,
        "timestamp": ts,
        "event_name": "api_call",
        "payload_stripe_customer_id": customer,
        "payload_value": "3" if customer == "cus_1" else "4",
    }


STRIPE_RECORDS = [
    stripe_record("e1", NOW_S, "cus_1"),
    stripe_record("e2", NOW_S - 60, "cus_2"),
    stripe_record("e1", NOW_S, "cus_1"),  # duplicate of the first
    stripe_record("e3", NOW_MS, "cus_1"),  # milliseconds: rejected
]
CHARGEBEE_RECORDS = [
    {"subscription_id": "sub_1", "usage_timestamp": NOW_MS, "deduplication_id": "d1",
     "properties": {"feature": "storage", "gb": 2.5}},
    {"subscription_id": "sub_1", "usage_timestamp": NOW_MS, "deduplication_id": "d1",
     "properties": {"feature": "storage", "gb": 9}},  # duplicate of the first
    {"subscription_id": "sub_2", "usage_timestamp": NOW_S, "deduplication_id": "d2",
     "properties": {"feature": "seats"}},  # seconds: rejected
]  # fmt: skip


def version(key: str = "incoming/usage.csv", size: int = 100, etag: str = "etag-1") -> FileVersion:
    return FileVersion(key=key, etag=etag, size=size, last_modified=ARRIVED)


def parse(data: bytes, fmt: str, key: str = "incoming/usage.csv", etag: str = "etag-1") -> ParsedFile:
    return parse_file(data, version(key, len(data), etag), fmt, ValidationLimits())


def encode(records: list[dict], fmt: str) -> bytes:
    """The records written in `fmt` ("csv", "json", "jsonl", each optionally ".gz")."""
    base = fmt.removesuffix(".gz")
    if base == "csv":
        cells = [{k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()} for r in records]
        data = pl.DataFrame(cells).write_csv().encode()
    elif base == "json":
        data = json.dumps(records).encode()
    else:
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
    return gzip.compress(data) if fmt.endswith(".gz") else data


def failure(parsed: ParsedFile) -> tuple[str | None, str | None]:
    assert parsed.status == "failed", parsed
    assert len(parsed.events) == 0 and len(parsed.rejects) == 0
    return parsed.failed_reason, parsed.failed_detail


# --- classify_file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("A.CSV", "csv"),
        ("a.json", "json"),
        ("a.jsonl", "jsonl"),
        ("a.NDJSON", "jsonl"),
        ("a.csv.gz", "csv.gz"),
        ("a.Json.GZ", "json.gz"),
        ("a.ndjson.gz", "jsonl.gz"),
        ("2026.03.01.usage.jsonl.gz", "jsonl.gz"),
    ],
)
def test_formats_by_extension_case_insensitive(name: str, fmt: str) -> None:
    assert classify_file(version(f"incoming/sub.dir/{name}"), 1000) == (fmt, None, None)


@pytest.mark.parametrize(
    "key", ["incoming/a.txt", "incoming/a.gz", "incoming/a.csv.zip", "incoming/csv", "a.csv/b"]
)
def test_other_extensions_are_unsupported(key: str) -> None:
    fmt, reason, detail = classify_file(version(key), 1000)
    assert (fmt, reason) == (None, "unsupported_file")
    assert detail and ".csv" in detail


def test_names_over_255_characters_are_unsupported() -> None:
    assert classify_file(version("incoming/" + "n" * 251 + ".csv"), 1000) == ("csv", None, None)
    fmt, reason, detail = classify_file(version("incoming/" + "n" * 252 + ".csv"), 1000)
    assert (fmt, reason) == (None, "unsupported_file")
    assert detail and "256 characters" in detail and "255" in detail


def test_files_over_the_size_limit_are_too_large() -> None:
    assert classify_file(version("incoming/a.csv.gz", size=1000), 1000) == ("csv.gz", None, None)
    fmt, reason, detail = classify_file(version("incoming/a.csv.gz", size=1001), 1000)
    assert (fmt, reason) == ("csv.gz", "file_too_large")
    assert detail and "1,001 bytes" in detail and "1,000 bytes" in detail


# --- formats and layouts -------------------------------------------------------------------------

FORMATS = ["csv", "json", "jsonl", "csv.gz", "json.gz", "jsonl.gz"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_stripe_layout_in_every_format(fmt: str) -> None:
    parsed = parse(encode(STRIPE_RECORDS, fmt), fmt)
    assert (parsed.status, parsed.format, parsed.layout) == ("ok", fmt, "stripe")
    assert parsed.events.schema == pl.Schema(EVENT_SCHEMA)
    assert parsed.events.select("event_id", "customer_id", "source_row").rows() == [
        ("e1", "cus_1", 1),
        ("e2", "cus_2", 2),
    ]
    assert parsed.events["properties"].to_list() == ['{"value":"3"}', '{"value":"4"}']
    assert (parsed.rows_total, parsed.rows_duplicate_in_file) == (4, 1)
    assert parsed.rejects.select("source_row", "error_code").rows() == [(4, "invalid_timestamp")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_chargebee_layout_in_every_format(fmt: str) -> None:
    parsed = parse(encode(CHARGEBEE_RECORDS, fmt), fmt)
    assert (parsed.status, parsed.layout) == ("ok", "chargebee")
    assert parsed.events.select("event_id", "subscription_id", "properties").rows() == [
        ("d1", "sub_1", '{"feature":"storage","gb":2.5}')
    ]
    assert (parsed.rows_total, parsed.rows_duplicate_in_file) == (3, 1)
    assert parsed.rejects.select("source_row", "error_code").rows() == [(3, "invalid_timestamp")]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_nested_stripe_payload_is_flattened(fmt: str) -> None:
    records = [
        {"identifier": "e1", "timestamp": NOW_S, "event_name": "llm_tokens",
         "payload": {"stripe_customer_id": "cus_1", "value": 1200, "model": "gpt"}},
        {"identifier": "e2", "timestamp": NOW_S, "event_name": "llm_tokens",
         "payload": {"stripe_customer_id": "cus_2", "value": "7.5"}},
    ]  # fmt: skip
    parsed = parse(encode(records, fmt), fmt)
    assert parsed.layout == "stripe"
    assert parsed.events.select("customer_id", "properties").rows() == [
        ("cus_1", '{"value":"1200","model":"gpt"}'),  # values as text; a key another row lacks is left out
        ("cus_2", '{"value":"7.5"}'),
    ]


def test_json_numbers_are_validated_as_their_text() -> None:
    records = [
        {"timestamp": NOW_S, "event_name": "api_call", "payload_stripe_customer_id": "c", "payload_value": 2},
        {"timestamp": float(NOW_S), "event_name": "api_call", "payload_stripe_customer_id": "c"},
        {"timestamp": NOW_S + 0.5, "event_name": "api_call", "payload_stripe_customer_id": "c"},
    ]
    parsed = parse(encode(records[:1], "jsonl"), "jsonl")
    assert len(parsed.events) == 1
    # A JSON number with an integral value (1772366400.0) is that integer; a fractional one is not an epoch.
    floats = parse(encode(records[1:], "jsonl"), "jsonl")
    assert len(floats.events) == 1
    assert floats.rejects["error_code"].to_list() == ["invalid_timestamp"]
    assert '"1772366400.5"' in floats.rejects["error_message"][0]


def test_json_with_mixed_types_in_a_column() -> None:
    records = [
        {"identifier": 17, "timestamp": NOW_S, "event_name": "api_call", "payload_stripe_customer_id": "c"},
        {
            "identifier": "e2",
            "timestamp": str(NOW_S),
            "event_name": "api_call",
            "payload_stripe_customer_id": "c",
        },
    ]
    parsed = parse(encode(records, "json"), "json")
    assert parsed.events["event_id"].to_list() == ["17", "e2"]


def test_chargebee_json_properties_keep_only_the_rows_own_keys() -> None:
    records = [
        {"subscription_id": "s", "usage_timestamp": NOW_MS, "deduplication_id": "d1",
         "properties": {"feature": "storage", "gb": 2, "tags": ["a", "b"]}},
        {"subscription_id": "s", "usage_timestamp": NOW_MS, "deduplication_id": "d2",
         "properties": {"feature": "seats", "user": {"id": "u1", "admin": True}}},
        {"subscription_id": "s", "usage_timestamp": NOW_MS, "deduplication_id": "d3",
         "properties": '{"feature": "api"}'},  # a JSON string holding the object, as in CSV
        {"subscription_id": "s", "usage_timestamp": NOW_MS, "deduplication_id": "d4", "properties": 5},
    ]  # fmt: skip
    parsed = parse(encode(records, "jsonl"), "jsonl")
    assert [json.loads(p) for p in parsed.events["properties"]] == [
        {"feature": "storage", "gb": 2, "tags": ["a", "b"]},
        {"feature": "seats", "user": {"id": "u1", "admin": True}},
        {"feature": "api"},
    ]
    assert parsed.rejects.select("source_row", "error_code").rows() == [(4, "invalid_properties")]


def test_derived_ids_are_stable_across_parses_and_versions() -> None:
    data = f",{NOW_S},api_call,cus_1,5\n,{NOW_S},api_call,cus_1,5\n".encode()
    data = b"identifier,timestamp,event_name,payload_stripe_customer_id,payload_value\n" + data
    first = parse(data, "csv", key="incoming/a.csv", etag="v1")
    again = parse(data, "csv", key="incoming/a.csv", etag="v2")
    other = parse(data, "csv", key="incoming/b.csv", etag="v1")
    assert first.events["event_id"].to_list() == again.events["event_id"].to_list()
    assert first.events["event_id"].n_unique() == 2  # two rows, two events, no in-file duplicate
    assert set(first.events["event_id"]).isdisjoint(other.events["event_id"])


def test_blank_records_are_skipped_and_rows_keep_their_numbers() -> None:
    data = (
        "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value\n"
        f"e1,{NOW_S},api_call,cus_1,5\n\n,,,,\n"
        f"e2,{NOW_S},api_call,cus_1,5\n\n\n"
    ).encode()
    parsed = parse(data, "csv")
    assert parsed.rows_total == 2 and len(parsed.rejects) == 0
    assert parsed.events["source_row"].to_list() == [1, 4]


# --- empty files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", "csv"),
        (b"  \n\n", "csv"),
        (b"identifier,timestamp,event_name,payload_stripe_customer_id\n", "csv"),
        (b"subscription_id,usage_timestamp,deduplication_id,properties\n\n\n", "csv"),
        (b"", "json"),
        (b"[]", "json"),
        (b" [ ]\n", "json"),
        (b"{}", "json"),
        (b"[{}, {}]", "json"),
        (b"", "jsonl"),
        (b"\n\n", "jsonl"),
        (b"{}\n{}\n", "jsonl"),
        (gzip.compress(b""), "csv.gz"),
        (gzip.compress(b"[]"), "json.gz"),
        (gzip.compress(b"\n"), "jsonl.gz"),
    ],
)
def test_files_without_records_are_empty(data: bytes, fmt: str) -> None:
    parsed = parse(data, fmt)
    assert (parsed.status, parsed.format, parsed.failed_reason, parsed.rows_total) == ("empty", fmt, None, 0)


# --- file-level failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"not gzip at all", gzip.compress(b"a,b\n1,2\n")[:-8], b"\x1f\x8b\x08garbage"]
)
def test_corrupt_gzip_is_unreadable(data: bytes) -> None:
    reason, detail = failure(parse(data, "csv.gz"))
    assert reason == "unreadable_file"
    assert detail and "not valid gzip: " in detail


@pytest.mark.parametrize(
    ("data", "fmt", "where"),
    [
        (b"\xff\xfe\x00garbage\x00\x81,\xc3\x28\n\x9f,\x00\n", "csv", "UTF-16"),
        (b"\x00\x01\x02garbage", "json", "byte 0"),
        (b'{"identifier": "e1", "timestamp": 1}', "json", "one JSON object"),
        (b"5", "json", "byte 0"),
        (b'"text"', "json", "byte 0"),
        (b"[1, 2, 3]", "json", "element 1 is a number"),
        (b'[{"a": 1}, ', "json", "byte 11"),
        (b'[{"a": 1}] trailing', "json", "byte 11"),
        (b"hello world\n", "jsonl", "line 1 is not valid JSON"),
        (b"identifier,timestamp\n\xe9,1\n", "csv", "byte 21 (line 2)"),
    ],
)
def test_garbage_is_unreadable_and_the_detail_says_where(data: bytes, fmt: str, where: str) -> None:
    reason, detail = failure(parse(data, fmt))
    assert reason == "unreadable_file"
    assert detail and len(detail) <= 400 and where in detail


def test_a_file_of_unknown_columns_is_an_unknown_layout_even_with_a_ragged_row() -> None:
    # Was unreadable as a whole; the ragged row is now a row problem, the columns are the file's.
    reason, detail = failure(parse(b"a,b\n1,2,3,4\n", "csv"))
    assert reason == "unknown_layout"
    assert detail and "(a, b)" in detail


@pytest.mark.parametrize(
    ("bad", "fmt", "message"),
    [
        # These used to fail the whole file; now the good records load and the bad one is a row.
        (
            "e9,{ts},api_call,cus_1,5,extra,fields",
            "csv",
            "the record on line 3 has 7 fields; the header has 5",
        ),
        ("e9,{ts},api_call", "csv", "the record on line 3 has 3 fields; the header has 5"),
        ("[1]", "jsonl", "line 2 is an array, not a JSON object"),
        ('{{"identifier": "e9", "timestamp": ', "jsonl", "line 2 is not valid JSON"),
        ("# a comment", "jsonl", "line 2 is not valid JSON: # a comment"),
    ],
)
def test_a_bad_record_is_a_malformed_row_not_a_file_failure(bad: str, fmt: str, message: str) -> None:
    good = [stripe_record("e1", NOW_S, "cus_1"), stripe_record("e2", NOW_S, "cus_2")]
    lines = encode(good, fmt).decode().splitlines()
    at = 2 if fmt == "csv" else 1  # after the first record, so on line 3 of a CSV, line 2 of JSON Lines
    data = "\n".join([*lines[:at], bad.format(ts=NOW_S), *lines[at:]]).encode() + b"\n"
    parsed = parse(data, fmt)
    assert parsed.status == "ok" and parsed.rows_total == 3
    assert parsed.events["event_id"].to_list() == ["e1", "e2"]
    reject = parsed.rejects.row(0, named=True)
    assert (reject["source_row"], reject["error_code"]) == (2, "malformed_record")
    assert reject["error_message"].startswith(message)
    assert reject["raw_record"] == bad.format(ts=NOW_S)


def test_json_array_elements_that_are_not_objects_are_malformed_rows() -> None:
    records = [stripe_record("e1", NOW_S, "cus_1"), 5, "text", None, [stripe_record("e2", NOW_S, "cus_1")]]
    parsed = parse(json.dumps(records).encode(), "json")
    assert parsed.status == "ok" and parsed.rows_total == 5
    assert parsed.events["event_id"].to_list() == ["e1"]
    assert parsed.rejects.select("source_row", "error_message").rows() == [
        (2, "element 2 is a number, not a JSON object"),
        (3, "element 3 is a string, not a JSON object"),
        (4, "element 4 is null, not a JSON object"),
        (5, "element 5 is an array, not a JSON object"),
    ]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_a_key_whose_type_changes_from_record_to_record_never_fails_the_file(fmt: str) -> None:
    base = {"subscription_id": "s", "usage_timestamp": NOW_MS}
    records = [
        {**base, "deduplication_id": "d1", "properties": {"feature": "api"}},
        {**base, "deduplication_id": "d2", "properties": 5},
        {**base, "deduplication_id": "d3", "properties": "storage"},
        {**base, "deduplication_id": "d4", "properties": ["a", {"b": 1}]},
        {**base, "deduplication_id": 12345678901234567890123, "properties": {"feature": "seats"}},
        {**base, "deduplication_id": {"nested": True}, "properties": {}},
        {
            **base,
            "usage_timestamp": 123456789012345678901234567890,
            "deduplication_id": "d7",
            "properties": {},
        },
    ]
    parsed = parse(encode(records, fmt), fmt)
    assert parsed.status == "ok" and parsed.rows_total == 7
    assert parsed.events["event_id"].to_list() == ["d1", "12345678901234567890123", '{"nested":true}']
    assert parsed.rejects.select("source_row", "error_code").rows() == [
        (2, "invalid_properties"),
        (3, "invalid_properties"),
        (4, "invalid_properties"),
        (7, "invalid_timestamp"),
    ]
    assert "outside the range of a 64-bit integer" in parsed.rejects["error_message"][3]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_a_stripe_payload_that_is_an_object_in_one_record_and_a_string_in_another(fmt: str) -> None:
    records = [
        {"identifier": "e1", "timestamp": NOW_S, "event_name": "api_call",
         "payload": {"stripe_customer_id": "cus_1", "value": 3}},
        {"identifier": "e2", "timestamp": NOW_S, "event_name": "api_call", "payload": "cus_2"},
        {"identifier": "e3", "timestamp": NOW_S, "event_name": "api_call",
         "payload": {"stripe_customer_id": "cus_3", "value": {"unit": "ms", "n": 5}}},
    ]  # fmt: skip
    parsed = parse(encode(records, fmt), fmt)
    assert parsed.events["customer_id"].to_list() == ["cus_1"]
    assert parsed.rejects.select("source_row", "error_code").rows() == [
        (2, "missing_required_field"),
        (3, "invalid_value"),
    ]


def test_unknown_layout_lists_the_columns() -> None:
    reason, detail = failure(parse(b"user,when,amount\nu1,2026-03-01,5\n", "csv"))
    assert reason == "unknown_layout"
    assert detail and "user, when, amount" in detail


def test_a_tie_between_layouts_is_unknown() -> None:
    reason, detail = failure(parse(b"timestamp,event_name,subscription_id,properties\n1,a,s,{}\n", "csv"))
    assert reason == "unknown_layout"
    assert detail and "equally" in detail


def test_the_layout_with_more_of_its_fields_wins() -> None:
    data = f"timestamp,event_name,payload_stripe_customer_id,properties\n{NOW_S},api_call,cus_1,x\n".encode()
    parsed = parse(data, "csv")
    assert parsed.layout == "stripe" and len(parsed.events) == 1


@pytest.mark.parametrize(
    ("header", "missing", "layout"),
    [
        ("identifier,event_name,payload_stripe_customer_id,payload_value", "timestamp", "stripe"),
        ("identifier,timestamp,payload_value,payload_stripe_customer_id", "event_name", "stripe"),
        ("identifier,timestamp,event_name,payload_value", "payload_stripe_customer_id", "stripe"),
        ("usage_timestamp,deduplication_id,properties", "subscription_id", "chargebee"),
        ("subscription_id,deduplication_id,properties", "usage_timestamp", "chargebee"),
        ("subscription_id,usage_timestamp,properties", "deduplication_id", "chargebee"),
        ("subscription_id,usage_timestamp,deduplication_id", "properties", "chargebee"),
        ("identifier,payload_value", "timestamp", "stripe"),  # the first missing in order
    ],
)
def test_missing_mandatory_column(header: str, missing: str, layout: str) -> None:
    parsed = parse(f"{header}\n{','.join('x' for _ in header.split(','))}\n".encode(), "csv")
    reason, detail = failure(parsed)
    assert reason == f"missing_column:{missing}"
    assert parsed.layout == layout
    assert detail and missing in detail


def test_missing_column_in_json_is_detected_across_all_records() -> None:
    records = [dict(r) for r in STRIPE_RECORDS]
    for r in records:
        del r["event_name"]
    reason, _ = failure(parse(encode(records, "json"), "json"))
    assert reason == "missing_column:event_name"


def test_a_key_first_seen_late_in_json_lines_is_not_lost() -> None:
    head = {"timestamp": NOW_S, "event_name": "api_call", "payload_stripe_customer_id": "c"}
    records = [dict(head, identifier=f"e{i}") for i in range(150)] + [
        dict(head, identifier="late", payload_gb="3")
    ]
    parsed = parse(encode(records, "jsonl"), "jsonl")
    assert parsed.events.filter(pl.col("event_id") == "late")["properties"].to_list() == ['{"gb":"3"}']


def test_json_column_mixing_integer_and_fractional_timestamps_keeps_the_integer_rows():
    """One fractional timestamp must not turn the file's integer timestamps into rejects."""
    from datetime import UTC, datetime

    from usage_pipeline.core.ingest.model import FileVersion, ValidationLimits
    from usage_pipeline.core.ingest.parse import parse_file

    arrival = datetime(2026, 11, 20, tzinfo=UTC)
    ms = int(arrival.timestamp() * 1000) - 60_000
    body = (
        f'{{"subscription_id":"s","usage_timestamp":{ms},"deduplication_id":"a","properties":{{}}}}\n'
        f'{{"subscription_id":"s","usage_timestamp":{ms}.5,"deduplication_id":"b","properties":{{}}}}\n'
    ).encode()
    parsed = parse_file(body, FileVersion("k.jsonl", "e", len(body), arrival), "jsonl", ValidationLimits())
    assert parsed.events["event_id"].to_list() == ["a"]
    assert parsed.rejects["error_code"].to_list() == ["invalid_timestamp"]


def test_gzip_that_expands_past_the_limit_is_too_large_and_multi_member_gzip_reads() -> None:
    import gzip as gz
    from datetime import UTC, datetime

    from usage_pipeline.core.ingest.model import FileVersion, ValidationLimits
    from usage_pipeline.core.ingest.parse import parse_file

    arrival = datetime(2026, 11, 20, tzinfo=UTC)
    bomb = gz.compress(b"a" * 5_000_000)
    limits = ValidationLimits(max_decompressed_bytes=1_000_000)
    parsed = parse_file(bomb, FileVersion("k.csv.gz", "e", len(bomb), arrival), "csv.gz", limits)
    assert (parsed.status, parsed.failed_reason) == ("failed", "file_too_large")
    ts = int(arrival.timestamp()) - 60
    header = b"identifier,timestamp,event_name,payload_stripe_customer_id\n"
    two = gz.compress(header + f"a,{ts},x,c\n".encode()) + gz.compress(f"b,{ts},x,c\n".encode())
    parsed = parse_file(two, FileVersion("k.csv.gz", "e", len(two), arrival), "csv.gz", ValidationLimits())
    assert parsed.events["event_id"].to_list() == ["a", "b"]
