"""Row validation (SPEC 3) and in-file deduplication (SPEC 4), through parse_file on small CSV files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from usage_pipeline.core.ingest import validate
from usage_pipeline.core.ingest.model import (
    EVENT_SCHEMA,
    REJECT_SCHEMA,
    ROW_ERROR_CODES,
    FileVersion,
    ParsedFile,
    ValidationLimits,
)
from usage_pipeline.core.ingest.parse import parse_file

ARRIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_S = int(ARRIVED.timestamp())  # Stripe timestamps are seconds
NOW_MS = NOW_S * 1000  # Chargebee timestamps are milliseconds
DAY = 86_400

STRIPE_HEADER = "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value"
CHARGEBEE_HEADER = "subscription_id,usage_timestamp,deduplication_id,properties"


def version(key: str = "incoming/usage.csv", arrived: datetime = ARRIVED) -> FileVersion:
    return FileVersion(key=key, etag="etag-1", size=100, last_modified=arrived)


def parse_csv(header: str, *rows: str, file: FileVersion | None = None, **limits: timedelta) -> ParsedFile:
    data = "\n".join([header, *rows]).encode() + b"\n"
    return parse_file(data, file or version(), "csv", ValidationLimits(**limits))


def stripe(*rows: str, **kwargs) -> ParsedFile:
    return parse_csv(STRIPE_HEADER, *rows, **kwargs)


def chargebee(*rows: str, **kwargs) -> ParsedFile:
    return parse_csv(CHARGEBEE_HEADER, *rows, **kwargs)


def props(obj: dict) -> str:
    """A JSON object as a quoted CSV cell."""
    return '"' + json.dumps(obj).replace('"', '""') + '"'


def only_reject(parsed: ParsedFile) -> dict:
    assert parsed.status == "ok"
    assert len(parsed.events) == 0, parsed.events
    assert len(parsed.rejects) == 1, parsed.rejects
    return parsed.rejects.row(0, named=True)


def accepted(parsed: ParsedFile) -> bool:
    assert parsed.status == "ok"
    return len(parsed.events) == 1 and len(parsed.rejects) == 0


# --- every row error code ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("e1,,api_call,cus_1,5", "timestamp"),
        (f"e1,{NOW_S},,cus_1,5", "event_name"),
        (f"e1,{NOW_S},api_call,,5", "payload_stripe_customer_id"),
        (f'e1,{NOW_S},"   ",cus_1,5', "event_name"),  # whitespace only counts as absent
    ],
)
def test_stripe_missing_required_field_names_the_field(row: str, field: str) -> None:
    reject = only_reject(stripe(row))
    assert reject["error_code"] == "missing_required_field"
    assert field in reject["error_message"]


@pytest.mark.parametrize("field", ["subscription_id", "usage_timestamp", "deduplication_id", "properties"])
def test_chargebee_missing_required_field_names_the_field(field: str) -> None:
    values = {"subscription_id": "sub_1", "usage_timestamp": str(NOW_MS), "deduplication_id": "d1"}
    values["properties"] = props({"feature": "api"})
    values[field] = ""
    reject = only_reject(chargebee(",".join(values.values())))
    assert reject["error_code"] == "missing_required_field"
    assert field in reject["error_message"]


@pytest.mark.parametrize("value", ["1.0", "1700000000.5", "abc", "1e9", "0x10", "17OO000000"])
def test_timestamp_that_is_not_an_integer_epoch_is_invalid(value: str) -> None:
    reject = only_reject(stripe(f"e1,{value},api_call,cus_1,5"))
    assert reject["error_code"] == "invalid_timestamp"
    assert "not an integer" in reject["error_message"]


def test_timestamp_that_overflows_is_invalid_not_a_crash() -> None:
    for value in ("99999999999999999999999", "-99999999999"):
        reject = only_reject(stripe(f"e1,{value},api_call,cus_1,5"))
        assert reject["error_code"] == "invalid_timestamp"
    far = only_reject(chargebee(f"sub_1,9000000000000000000,d1,{props({})}"))
    assert far["error_code"] == "invalid_timestamp"


def test_stripe_timestamp_in_milliseconds_is_rejected_with_the_unit_named() -> None:
    reject = only_reject(stripe(f"e1,{NOW_MS},api_call,cus_1,5"))
    assert reject["error_code"] == "invalid_timestamp"
    assert (
        reject["error_message"]
        == f"timestamp {NOW_MS} looks like milliseconds; the Stripe layout wants seconds"
    )


def test_chargebee_timestamp_in_seconds_is_rejected_with_the_unit_named() -> None:
    reject = only_reject(chargebee(f"sub_1,{NOW_S},d1,{props({})}"))
    assert reject["error_code"] == "invalid_timestamp"
    assert reject["error_message"] == (
        f"usage_timestamp {NOW_S} looks like seconds; the Chargebee layout wants milliseconds"
    )


def test_unit_threshold_is_ten_to_the_eleventh() -> None:
    # 10^11 - 1 s is year 5138: a valid unit, but far in the future; 10^11 is milliseconds for Stripe.
    assert only_reject(stripe(f"e1,{10**11 - 1},api_call,cus_1,5"))["error_code"] == "timestamp_in_future"
    assert "milliseconds" in only_reject(stripe(f"e1,{10**11},api_call,cus_1,5"))["error_message"]
    assert "seconds" in only_reject(chargebee(f"sub_1,{10**11 - 1},d1,{props({})}"))["error_message"]


def test_padded_timestamp_is_trimmed() -> None:
    parsed = stripe(f'e1," {NOW_S} ",api_call,cus_1,5')
    assert accepted(parsed)
    assert parsed.events["ts"][0] == ARRIVED.replace(tzinfo=None)


def test_too_far_in_past_message_gives_the_time_the_gap_and_the_limit() -> None:
    ts = NOW_S - 41 * DAY
    reject = only_reject(stripe(f"e1,{ts},api_call,cus_1,5"))
    assert reject["error_code"] == "timestamp_too_far_in_past"
    assert reject["error_message"] == (
        "timestamp is 2026-01-19T12:00:00Z, 41 days before the file arrived (limit 35 days)"
    )


def test_in_future_message_gives_the_gap_and_the_limit() -> None:
    reject = only_reject(chargebee(f"sub_1,{NOW_MS + 2 * 3_600_000 + 60_000},d1,{props({})}"))
    assert reject["error_code"] == "timestamp_in_future"
    assert reject["error_message"] == (
        "usage_timestamp is 2026-03-01T14:01:00Z, 2 hours 1 minute after the file arrived (limit 5 minutes)"
    )


def test_event_window_edges_are_inclusive() -> None:
    assert accepted(stripe(f"e1,{NOW_S - 35 * DAY},api_call,cus_1,5"))
    assert only_reject(stripe(f"e1,{NOW_S - 35 * DAY - 1},api_call,cus_1,5"))["error_code"] == (
        "timestamp_too_far_in_past"
    )
    assert accepted(chargebee(f"sub_1,{NOW_MS + 300_000},d1,{props({})}"))
    assert only_reject(chargebee(f"sub_1,{NOW_MS + 300_001},d1,{props({})}"))["error_code"] == (
        "timestamp_in_future"
    )


def test_windows_are_relative_to_the_file_arrival_not_the_clock() -> None:
    row = f"e1,{NOW_S - 10 * DAY},api_call,cus_1,5"
    assert accepted(stripe(row))
    late = version(arrived=ARRIVED + timedelta(days=30))
    assert only_reject(stripe(row, file=late))["error_code"] == "timestamp_too_far_in_past"
    early = version(arrived=ARRIVED - timedelta(days=11))
    assert only_reject(stripe(row, file=early))["error_code"] == "timestamp_in_future"


def test_windows_follow_the_configured_limits() -> None:
    row = f"e1,{NOW_S - 2 * DAY},api_call,cus_1,5"
    assert accepted(stripe(row))
    assert only_reject(stripe(row, max_event_age=timedelta(days=1)))["error_code"] == (
        "timestamp_too_far_in_past"
    )
    soon = f"e1,{NOW_S + 3600},api_call,cus_1,5"
    assert accepted(stripe(soon, max_future_skew=timedelta(hours=2)))


def test_identifier_over_100_characters_is_invalid() -> None:
    assert accepted(stripe(f"{'i' * 100},{NOW_S},api_call,cus_1,5"))
    assert accepted(stripe(f"{'é' * 100},{NOW_S},api_call,cus_1,5"))  # characters, not bytes
    reject = only_reject(stripe(f"{'i' * 101},{NOW_S},api_call,cus_1,5"))
    assert reject["error_code"] == "invalid_identifier"
    assert reject["error_message"] == "identifier is 101 characters long; the limit is 100"


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-Infinity", "0x10", "1,5", "1e999", "5 kg", "--1"])
def test_value_that_is_not_a_finite_decimal_is_invalid(value: str) -> None:
    reject = only_reject(stripe(f'e1,{NOW_S},api_call,cus_1,"{value}"'))
    assert reject["error_code"] == "invalid_value"
    assert "not a finite decimal number" in reject["error_message"]


@pytest.mark.parametrize(
    "value", ["5", "-2.5", ".5", "5.", "1e3", "+1.25E-2", " 7 ", "123456789012345", "1.50"]
)
def test_finite_decimal_values_are_accepted(value: str) -> None:
    assert accepted(stripe(f'e1,{NOW_S},api_call,cus_1,"{value}"'))


@pytest.mark.parametrize("value", ["1234567890123456", "0.1234567890123456", "1234567890.123456"])
def test_value_over_15_significant_digits_is_invalid(value: str) -> None:
    reject = only_reject(stripe(f"e1,{NOW_S},api_call,cus_1,{value}"))
    assert reject["error_code"] == "invalid_value"
    assert "more than 15 significant digits" in reject["error_message"]


@pytest.mark.parametrize(
    "value", ["100000000000000000000", "0.000000000000000000123", "1.500000000000000000"]
)
def test_leading_and_trailing_zeros_are_not_significant(value: str) -> None:
    assert accepted(stripe(f"e1,{NOW_S},api_call,cus_1,{value}"))


def test_absent_value_is_fine_for_a_meter_that_reads_another_key() -> None:
    parsed = parse_csv(
        "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value,payload_tokens",
        f"e1,{NOW_S},llm_tokens,cus_1,,1200",
        f"e2,{NOW_S},llm_tokens,cus_1, ,1300",
    )
    assert len(parsed.events) == 2 and len(parsed.rejects) == 0
    assert parsed.events["properties"].to_list()[0] == '{"tokens":"1200"}'


@pytest.mark.parametrize(
    "text", ["[1, 2]", "5", '"{}"', "{bad", "null", "true", '{"a": 1} trailing', '{"a": 1,}']
)
def test_chargebee_properties_that_are_not_a_json_object_are_invalid(text: str) -> None:
    cell = '"' + text.replace('"', '""') + '"'
    reject = only_reject(chargebee(f"sub_1,{NOW_MS},d1,{cell}"))
    assert reject["error_code"] == "invalid_properties"
    assert "not a JSON object" in reject["error_message"]


def test_properties_over_1024_bytes_compact_are_too_large() -> None:
    # 1024 bytes exactly once compact, although the text as sent is longer.
    filler = "x" * (1024 - len('{"k":""}'))
    spaced = '{ "k" :  "' + filler + '" }'
    assert accepted(chargebee(f"sub_1,{NOW_MS},d1,{props(json.loads(spaced))}"))
    reject = only_reject(chargebee(f"sub_1,{NOW_MS},d1,{props({'k': filler + 'x'})}"))
    assert reject["error_code"] == "properties_too_large"
    assert reject["error_message"] == "properties are 1025 bytes as compact JSON; the limit is 1024 bytes"


def test_stripe_properties_are_its_extra_payload_fields() -> None:
    header = "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value,payload_note"
    fits = "n" * (1024 - len('{"value":"5","note":""}'))
    assert len(parse_csv(header, f"e1,{NOW_S},api_call,cus_1,5,{fits}").events) == 1
    reject = only_reject(parse_csv(header, f"e1,{NOW_S},api_call,cus_1,5,{fits}n"))
    assert reject["error_code"] == "properties_too_large"


# --- precedence ----------------------------------------------------------------------------------

STRIPE_TWO_PROBLEMS = [
    # (row, expected code): each row breaks two rules; the earlier code of SPEC 3 wins.
    ("e1,abc,,cus_1,5", "missing_required_field"),
    (f"{'i' * 101},{NOW_MS},api_call,cus_1,abc", "invalid_timestamp"),
    (f"{'i' * 101},{NOW_S - 40 * DAY},api_call,cus_1,abc", "timestamp_too_far_in_past"),
    (f"{'i' * 101},{NOW_S + DAY},api_call,cus_1,abc", "timestamp_in_future"),
    (f"{'i' * 101},{NOW_S},api_call,cus_1,abc", "invalid_identifier"),
]


@pytest.mark.parametrize(("row", "code"), STRIPE_TWO_PROBLEMS)
def test_stripe_row_with_two_problems_gets_the_first_code(row: str, code: str) -> None:
    assert only_reject(stripe(row))["error_code"] == code


def test_value_error_comes_before_properties_too_large() -> None:
    header = "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value,payload_note"
    reject = only_reject(parse_csv(header, f"e1,{NOW_S},api_call,cus_1,abc,{'n' * 2000}"))
    assert reject["error_code"] == "invalid_value"


@pytest.mark.parametrize(
    ("ts", "cell", "code"),
    [
        ("", "[1]", "missing_required_field"),
        (str(NOW_S), "[1]", "invalid_timestamp"),
        (str(NOW_MS - 40 * DAY * 1000), "[1]", "timestamp_too_far_in_past"),
        (str(NOW_MS + DAY * 1000), "[1]", "timestamp_in_future"),
        (str(NOW_MS), "[" + "1," * 600 + "1]", "invalid_properties"),  # also over 1024 bytes
    ],
)
def test_chargebee_row_with_two_problems_gets_the_first_code(ts: str, cell: str, code: str) -> None:
    assert only_reject(chargebee(f'sub_1,{ts},d1,"{cell}"'))["error_code"] == code


def test_codes_come_from_the_model_list() -> None:
    parsed = stripe(*(row for row, _ in STRIPE_TWO_PROBLEMS))
    assert set(parsed.rejects["error_code"]) <= set(ROW_ERROR_CODES)
    order = [ROW_ERROR_CODES.index(code) for _, code in STRIPE_TWO_PROBLEMS]
    assert order == sorted(order)


# --- outputs -------------------------------------------------------------------------------------


def test_stripe_event_columns() -> None:
    parsed = parse_csv(
        "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value,payload_model,payload_region",
        f'e1,{NOW_S},llm_tokens,cus_1,12.5,"gpt ""4""",',
        file=version("incoming/2026/03/a.csv"),
    )
    assert parsed.layout == "stripe"
    assert parsed.events.schema == pl.Schema(EVENT_SCHEMA)
    event = parsed.events.row(0, named=True)
    assert event == {
        "event_id": "e1",
        "layout": "stripe",
        "event_name": "llm_tokens",
        "customer_id": "cus_1",
        "subscription_id": None,
        "ts": datetime(2026, 3, 1, 12, 0),
        # the customer is not a property; an empty cell is left out; values stay text
        "properties": '{"value":"12.5","model":"gpt \\"4\\""}',
        "source_file": "incoming/2026/03/a.csv",
        "source_etag": "etag-1",
        "source_row": 1,
    }


def test_chargebee_event_columns() -> None:
    parsed = chargebee(f'sub_1,{NOW_MS + 123 - 60_000},d1,"{{ ""feature"" : ""storage"", ""gb"": 1.5 }}"')
    assert parsed.layout == "chargebee"
    event = parsed.events.row(0, named=True)
    assert event["event_id"] == "d1"
    assert event["subscription_id"] == "sub_1"
    assert event["customer_id"] is None and event["event_name"] is None
    assert event["ts"] == datetime(2026, 3, 1, 11, 59, 0, 123_000)
    assert event["properties"] == '{"feature":"storage","gb":1.5}'


def test_reject_carries_the_row_as_read() -> None:
    parsed = stripe(f"e1,{NOW_S},api_call,cus_1,5", f"e2,{NOW_MS},api_call,cus_2,")
    assert parsed.rejects.schema == pl.Schema(REJECT_SCHEMA)
    reject = parsed.rejects.row(0, named=True)
    assert reject["source_row"] == 2
    assert (reject["source_file"], reject["source_etag"]) == ("incoming/usage.csv", "etag-1")
    assert json.loads(reject["raw_record"]) == {
        "identifier": "e2",
        "timestamp": str(NOW_MS),
        "event_name": "api_call",
        "payload_stripe_customer_id": "cus_2",
        "payload_value": None,
    }


def test_missing_identifier_gets_an_id_from_file_key_and_row() -> None:
    parsed = stripe(
        f"e1,{NOW_S},api_call,cus_1,5", f",{NOW_S},api_call,cus_1,5", f" ,{NOW_S},api_call,cus_1,6"
    )
    assert parsed.events["event_id"].to_list() == ["e1", "incoming/usage.csv#2", "incoming/usage.csv#3"]


def test_every_row_is_accepted_duplicate_or_rejected() -> None:
    rows = [
        f"e1,{NOW_S},api_call,cus_1,5",
        f"e1,{NOW_S + 1},api_call,cus_1,6",  # duplicate of row 1
        f"e2,{NOW_MS},api_call,cus_1,5",  # rejected
        f",{NOW_S},api_call,cus_2,5",
        f"e3,{NOW_S},,cus_1,5",  # rejected
        f"e2,{NOW_S},api_call,cus_1,5",  # first valid e2: accepted
    ]
    parsed = stripe(*rows)
    assert parsed.rows_total == 6
    assert parsed.rows_total == len(parsed.events) + parsed.rows_duplicate_in_file + len(parsed.rejects)
    assert parsed.rows_duplicate_in_file == 1
    assert sorted(parsed.events["source_row"].to_list() + parsed.rejects["source_row"].to_list()) == [
        1,
        3,
        4,
        5,
        6,
    ]


# --- in-file deduplication -----------------------------------------------------------------------


def test_stripe_duplicates_by_customer_and_identifier_first_wins() -> None:
    parsed = stripe(
        f"e1,{NOW_S},api_call,cus_1,5",
        f"e1,{NOW_S - 60},api_call,cus_1,7",  # same customer and id: duplicate, whatever else differs
        f"e1,{NOW_S},api_call,cus_2,5",  # same id, other customer: another event
    )
    assert parsed.rows_duplicate_in_file == 1
    assert parsed.events.select("source_row", "customer_id").rows() == [(1, "cus_1"), (3, "cus_2")]
    assert parsed.events["properties"][0] == '{"value":"5"}'


def test_a_rejected_row_does_not_claim_the_key() -> None:
    parsed = stripe(f"e1,{NOW_MS},api_call,cus_1,5", f"e1,{NOW_S},api_call,cus_1,5")
    assert parsed.rows_duplicate_in_file == 0
    assert parsed.events["source_row"].to_list() == [2]
    assert parsed.rejects["source_row"].to_list() == [1]


def test_chargebee_duplicates_by_subscription_timestamp_and_deduplication_id() -> None:
    parsed = chargebee(
        f"sub_1,{NOW_MS},d1,{props({'n': 1})}",
        f"sub_1,+{NOW_MS},d1,{props({'n': 2})}",  # same instant written differently: duplicate
        f"sub_1,{NOW_MS + 1},d1,{props({})}",  # another timestamp: another event
        f"sub_2,{NOW_MS},d1,{props({})}",  # another subscription: another event
    )
    assert parsed.rows_duplicate_in_file == 1
    assert parsed.events["source_row"].to_list() == [1, 3, 4]
    assert parsed.events["properties"][0] == '{"n":1}'


def test_dedup_keeps_the_first_of_many_in_a_larger_file() -> None:
    # Row i has the key (cus_{i % 7}, e{i % 700}): rows i and i + 700 share it, the first 700 are distinct.
    parsed = stripe(*(f"e{i % 700},{NOW_S},api_call,cus_{i % 7},1" for i in range(2000)))
    assert len(parsed.events) == 700
    assert parsed.events["source_row"].to_list() == list(range(1, 701))
    assert parsed.rows_duplicate_in_file == 1300


def moved_before(code: str, other: str) -> tuple[str, ...]:
    """ROW_ERROR_CODES with `code` moved just before `other`."""
    codes = [c for c in ROW_ERROR_CODES if c != code]
    codes.insert(codes.index(other), code)
    return tuple(codes)


def test_the_model_list_is_the_precedence_validation_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    too_long_and_not_a_number = f"{'i' * 101},{NOW_S},api_call,cus_1,abc"
    monkeypatch.setattr(validate, "ROW_ERROR_CODES", moved_before("invalid_value", "invalid_identifier"))
    assert only_reject(stripe(too_long_and_not_a_number))["error_code"] == "invalid_value"
    # A properties rule (applied after the others, on the rows they leave) moved ahead still wins.
    monkeypatch.setattr(validate, "ROW_ERROR_CODES", moved_before("properties_too_large", "invalid_value"))
    header = "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value,payload_note"
    reject = only_reject(parse_csv(header, f"e1,{NOW_S},api_call,cus_1,abc,{'n' * 2000}"))
    assert reject["error_code"] == "properties_too_large"


# --- malformed records and the size of what a reject keeps -----------------------------------------


def test_malformed_record_comes_first_in_the_model_list() -> None:
    assert ROW_ERROR_CODES[0] == "malformed_record"


def test_a_record_with_the_wrong_number_of_fields_is_malformed_whatever_else_it_breaks() -> None:
    parsed = stripe(f"e1,{NOW_S},api_call,cus_1,5", f"e2,{NOW_MS},,cus_1,abc,extra", f"e3,{NOW_MS}")
    assert parsed.events["event_id"].to_list() == ["e1"]
    assert parsed.rejects.select("source_row", "error_code", "error_message", "raw_record").rows() == [
        (
            2,
            "malformed_record",
            "the record on line 3 has 6 fields; the header has 5",
            f"e2,{NOW_MS},,cus_1,abc,extra",
        ),
        (3, "malformed_record", "the record on line 4 has 2 fields; the header has 5", f"e3,{NOW_MS}"),
    ]


def test_malformed_line_numbers_count_physical_lines_of_quoted_newlines_and_blank_lines() -> None:
    note = '"two\nlines"'
    parsed = parse_csv(
        STRIPE_HEADER + ",payload_note",
        f"e1,{NOW_S},api_call,cus_1,5,{note}",  # lines 2-3
        "",  # line 4
        f'"e\n2",{NOW_S},api_call,cus_1,5,x,extra',  # lines 5-6, one field too many
        f"e3,{NOW_S},api_call,cus_1,5,x",
    )
    assert parsed.rows_total == 3 and parsed.events["event_id"].to_list() == ["e1", "e3"]
    reject = only_malformed(parsed)
    assert reject["source_row"] == 3  # the blank record keeps its number
    assert reject["error_message"] == "the record on line 5 has 7 fields; the header has 6"
    assert reject["raw_record"] == f'"e\n2",{NOW_S},api_call,cus_1,5,x,extra'


def only_malformed(parsed: ParsedFile) -> dict:
    assert parsed.status == "ok"
    malformed = parsed.rejects.filter(pl.col("error_code") == "malformed_record")
    assert len(malformed) == 1, parsed.rejects
    return malformed.row(0, named=True)


def test_raw_record_keeps_at_most_4_kib_of_the_record_and_says_it_was_cut() -> None:
    header = STRIPE_HEADER + ",payload_note"
    note = "é" * 5000  # two bytes each: the cut must not split one
    reject = only_reject(parse_csv(header, f"e1,{NOW_S},api_call,cus_1,5,{note}"))
    assert reject["error_code"] == "properties_too_large"
    full = json.dumps(
        dict(zip(header.split(","), ["e1", str(NOW_S), "api_call", "cus_1", "5", note], strict=True)),
        ensure_ascii=False,
        separators=(",", ":"),
    )
    raw = reject["raw_record"]
    assert len(raw.encode()) <= 4096
    assert raw.endswith(f"…[truncated from {len(full.encode())} bytes]")
    assert full.startswith(raw.split("…[truncated")[0])


def test_cap_bytes_cuts_on_characters_and_leaves_short_text_alone() -> None:
    from usage_pipeline.core.ingest.rejects import cap_bytes

    texts = pl.Series(["a" * 5000, "é" * 3000, "short", None, "x" * 100])
    capped = cap_bytes(texts.clone(), 100)
    assert capped[2:].to_list() == ["short", None, "x" * 100]
    for original, cut in zip(texts[:2], capped[:2], strict=True):
        assert len(cut.encode()) <= 100
        assert cut.endswith(f"…[truncated from {len(original.encode())} bytes]")
        assert original.startswith(cut.split("…")[0])
