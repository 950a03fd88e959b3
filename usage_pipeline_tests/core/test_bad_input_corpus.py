"""A corpus of bad and odd usage files: each is judged as the SPEC says, and no record is lost or invented.

Every case states the outcome (file status and reason, or the row codes) and the product's `rows_total` is
checked against a count of the file's records made here, with Python's csv, json and gzip modules.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from usage_pipeline.cli.generate import generate_usage_file
from usage_pipeline.core.ingest.model import FileVersion, ParsedFile, ValidationLimits
from usage_pipeline.core.ingest.parse import parse_file

ARRIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = int(ARRIVED.timestamp())
MS = S * 1000
SMALL = ValidationLimits(max_decompressed_bytes=1_000_000)
STRIPE_COLUMNS = ["identifier", "timestamp", "event_name", "payload_stripe_customer_id", "payload_value"]
CHARGEBEE_COLUMNS = ["subscription_id", "usage_timestamp", "deduplication_id", "properties"]


# --- building files (independent of the product) ------------------------------------------------


def stripe(i: int, **changes: object) -> dict:
    record = {"identifier": f"e{i}", "timestamp": S - i, "event_name": "api_call",
              "payload_stripe_customer_id": f"cus_{i % 3}", "payload_value": str(i)}  # fmt: skip
    return {**record, **changes}


def nested(i: int, **changes: object) -> dict:
    record = {"identifier": f"e{i}", "timestamp": S - i, "event_name": "api_call",
              "payload": {"stripe_customer_id": f"cus_{i % 3}", "value": i}}  # fmt: skip
    return {**record, **changes}


def chargebee(i: int, **changes: object) -> dict:
    record = {"subscription_id": "sub_1", "usage_timestamp": MS - i, "deduplication_id": f"d{i}",
              "properties": {"feature": "api", "value": i}}  # fmt: skip
    return {**record, **changes}


def to_csv(rows: list[list[object]], newline: str = "\n") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    for row in rows:
        writer.writerow(row)
    return out.getvalue().encode()


def csv_of(records: list[dict], newline: str = "\n") -> bytes:
    columns = list(dict.fromkeys(key for r in records for key in r))
    cells = [
        [json.dumps(v) if isinstance(v := r.get(c), dict | list) else v for c in columns] for r in records
    ]
    return to_csv([columns, *cells], newline)


def jsonl_of(items: list[object], newline: str = "\n") -> bytes:
    return "".join(json.dumps(item) + newline for item in items).encode()


def json_of(items: list[object]) -> bytes:
    return json.dumps(items).encode()


def deflate_bomb(size: int, unit: bytes) -> bytes:
    """gzip of `size` bytes of `unit` repeated, built without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = unit * (65536 // len(unit))
    parts = [packer.compress(block) for _ in range(size // len(block))]
    return b"".join([*parts, packer.flush()])


# --- counting records (independent of the product) ----------------------------------------------


def _blank(record: list[str]) -> bool:
    return not any(record) or (len(record) == 1 and not record[0].strip())


def count_records(data: bytes, fmt: str) -> int:
    """Records in the file as Python's own modules read it: blank lines and `{}` are not records."""
    while data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    text = data.decode("utf-8-sig")
    if fmt.startswith("csv"):
        csv.field_size_limit(1 << 30)
        records = [r for r in csv.reader(io.StringIO(text, newline="")) if not _blank(r)]
        return max(len(records) - 1, 0)  # the header
    if fmt.startswith("jsonl"):
        return sum(1 for line in text.split("\n") if line.strip() and not _empty_object(line))
    return sum(1 for item in json.loads(text) if item != {})


def _empty_object(line: str) -> bool:
    try:
        return json.loads(line) == {}
    except ValueError:
        return False


# --- the cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    """A file, and what ingest must make of it: a failure, or rows with these codes (row -> code)."""

    name: str
    data: bytes
    fmt: str
    reason: str | None = None  # a failed file's reason
    detail: tuple[str, ...] = ()  # ...and what its detail must say
    codes: dict[int, str] = field(default_factory=dict)  # rejected rows: source_row -> error_code
    messages: dict[int, str] = field(default_factory=dict)  # some of them: source_row -> message start
    status: str = "ok"
    limits: ValidationLimits = field(default_factory=ValidationLimits)


def _ragged_cases() -> list[Case]:
    header = ",".join(STRIPE_COLUMNS)
    good = [f"e{i},{S},api_call,cus_1,{i}" for i in range(4)]
    return [
        Case(
            "csv_extra_field",
            "\n".join([header, good[0], good[1] + ",9", good[2]]).encode(),
            "csv",
            codes={2: "malformed_record"},
            messages={2: "the record on line 3 has 6 fields; the header has 5"},
        ),
        Case(
            "csv_missing_field",
            "\n".join([header, good[0], f"e1,{S},api_call", good[2]]).encode(),
            "csv",
            codes={2: "malformed_record"},
            messages={2: "the record on line 3 has 3 fields; the header has 5"},
        ),
        Case(
            "csv_many_extra_fields",
            "\n".join([header, good[0] + ",a" * 10, good[1]]).encode(),
            "csv",
            codes={1: "malformed_record"},
            messages={1: "the record on line 2 has 15 fields"},
        ),
        Case(
            "csv_extra_quoted_field_with_commas",
            f'{header}\n{good[0]},"x,y,z"\n{good[1]}\n'.encode(),
            "csv",
            codes={1: "malformed_record"},
            messages={1: "the record on line 2 has 6 fields"},
        ),
        Case(
            "csv_every_row_ragged",
            "\n".join([header, *(g + "," for g in good)]).encode(),
            "csv",
            codes=dict.fromkeys(range(1, 5), "malformed_record"),
        ),
        Case(
            "csv_ragged_after_quoted_newlines",
            f'{header},payload_note\ne0,{S},api_call,cus_1,0,"a\nb\nc"\ne1,{S},api_call\n'.encode(),
            "csv",
            codes={2: "malformed_record"},
            messages={2: "the record on line 5 has 3 fields"},
        ),
        Case(
            "csv_blank_and_space_lines_skipped",
            f"{header}\n\n{good[0]}\n   \n,,,,\n{good[1]}\n\n".encode(),
            "csv",
        ),
        Case(
            "csv_empty_trailing_value_is_not_ragged", f"{header},payload_note\n{good[0]},\n".encode(), "csv"
        ),
        Case(
            "csv_stray_quote_inside_a_field",
            f'{header}\ne0,{S},5" screen,cus_1,1\n{good[1]}\n'.encode(),
            "csv",
        ),
        Case(
            "csv_stray_quote_and_a_ragged_row",
            f'{header}\ne0,{S},5" screen,cus_1,1\ne1,{S},api_call\n{good[2]}\n'.encode(),
            "csv",
            codes={2: "malformed_record"},
            messages={2: "the record on line 3 has 3 fields"},
        ),
        Case(
            "csv_unclosed_quote_swallows_the_rest",
            f'{header}\n{good[0]}\ne1,{S},"api_call\n{good[2]}\n'.encode(),
            "csv",
            codes={2: "malformed_record"},
        ),
    ]


def _encoding_cases() -> list[Case]:
    rows = [stripe(i) for i in range(3)]
    bad_utf8 = csv_of(rows).replace(b"e1,", b"e\xff1,")
    bad_at = bad_utf8.index(b"\xff")
    return [
        Case("csv_utf8_bom", b"\xef\xbb\xbf" + csv_of(rows), "csv"),
        Case("jsonl_utf8_bom", b"\xef\xbb\xbf" + jsonl_of(rows), "jsonl"),
        Case("json_utf8_bom", b"\xef\xbb\xbf" + json_of(rows), "json"),
        Case(
            "csv_utf16_le_bom",
            csv_of(rows).decode().encode("utf-16"),
            "csv",
            reason="unreadable_file",
            detail=("UTF-16",),
        ),
        Case(
            "jsonl_utf16_be_bom",
            b"\xfe\xff" + jsonl_of(rows).decode().encode("utf-16-be"),
            "jsonl",
            reason="unreadable_file",
            detail=("UTF-16 (big-endian)",),
        ),
        Case(
            "csv_utf16_without_bom",
            csv_of(rows).decode().encode("utf-16-le"),
            "csv",
            reason="unreadable_file",
            detail=("NUL",),
        ),
        Case(
            "json_utf32_bom",
            json_of(rows).decode().encode("utf-32"),
            "json",
            reason="unreadable_file",
            detail=("UTF-32",),
        ),
        Case(
            "csv_invalid_utf8",
            bad_utf8,
            "csv",
            reason="unreadable_file",
            detail=(f"byte {bad_at:,} (line 3)",),
        ),
        Case(
            "jsonl_latin1",
            jsonl_of([stripe(0, event_name="café")]).replace(b"caf\\u00e9", b"caf\xe9"),
            "jsonl",
            reason="unreadable_file",
            detail=("not valid UTF-8",),
        ),
        Case(
            "json_invalid_utf8_in_a_key",
            json_of(rows).replace(b'"event_name"', b'"event\xc3_name"'),
            "json",
            reason="unreadable_file",
            detail=("not valid UTF-8",),
        ),
        Case("csv_crlf", csv_of(rows, "\r\n"), "csv"),
        Case("jsonl_crlf", jsonl_of(rows, "\r\n"), "jsonl"),
        Case("json_pretty_crlf", json.dumps(rows, indent=2).replace("\n", "\r\n").encode(), "json"),
        Case("csv_old_mac_line_ends", csv_of(rows, "\r"), "csv"),
        Case("csv_no_final_newline", csv_of(rows).rstrip(b"\n"), "csv"),
        Case("jsonl_no_final_newline", jsonl_of(rows).rstrip(b"\n"), "jsonl"),
        Case(
            "csv_quoted_newlines_crlf", csv_of([stripe(0, payload_note="a\r\nb"), stripe(1)], "\r\n"), "csv"
        ),
        Case("csv_nul_inside_a_value", csv_of([stripe(0, payload_note="x\x00y"), stripe(1)]), "csv"),
        Case(
            "jsonl_raw_nul_in_a_line",
            jsonl_of(rows).replace(b'"e1"', b'"e\x001"'),
            "jsonl",
            codes={2: "malformed_record"},
            messages={2: "line 2 is not valid JSON"},
        ),
        Case("jsonl_escaped_nul_is_fine", jsonl_of([stripe(0, payload_note="x\x00y")]), "jsonl"),
        Case(
            "zip_named_csv",
            b"PK\x03\x04" + b"\x00" * 40,
            "csv",
            reason="unreadable_file",
            detail=("zip archive",),
        ),
    ]


def _json_cases() -> list[Case]:
    good = jsonl_of([nested(0), nested(1)])
    return [
        Case(
            "jsonl_hash_comment",
            b"# exported 2026-03-01\n" + good,
            "jsonl",
            codes={1: "malformed_record"},
            messages={1: "line 1 is not valid JSON: # exported"},
        ),
        Case("jsonl_slash_comment_line", good + b"// the end\n", "jsonl", codes={3: "malformed_record"}),
        Case(
            "jsonl_trailing_garbage_on_a_line",
            good.replace(b"}}\n", b"}} x\n", 1),
            "jsonl",
            codes={1: "malformed_record"},
        ),
        Case(
            "jsonl_two_objects_on_a_line",
            (good + good).replace(b"\n", b" ", 1),
            "jsonl",
            codes={1: "malformed_record"},
        ),
        Case(
            "jsonl_array_line",
            good + b"[1, 2]\n",
            "jsonl",
            codes={3: "malformed_record"},
            messages={3: "line 3 is an array, not a JSON object"},
        ),
        Case(
            "jsonl_scalar_lines",
            good + b'5\n"x"\nnull\ntrue\n',
            "jsonl",
            codes=dict.fromkeys(range(3, 7), "malformed_record"),
            messages={
                3: "line 3 is a number",
                4: "line 4 is a string",
                5: "line 5 is null",
                6: "line 6 is a boolean",
            },
        ),
        Case(
            "jsonl_truncated_last_line",
            good + b'{"identifier": "e9", "timest',
            "jsonl",
            codes={3: "malformed_record"},
        ),
        Case(
            "jsonl_trailing_comma", good + b'{"identifier": "e9",}\n', "jsonl", codes={3: "malformed_record"}
        ),
        Case(
            "jsonl_nan",
            good + jsonl_of([nested(2)]).replace(b'"value": 2', b'"value": NaN'),
            "jsonl",
            codes={3: "malformed_record"},
        ),
        Case("jsonl_single_quotes", good + b"{'identifier': 'e9'}\n", "jsonl", codes={3: "malformed_record"}),
        Case(
            "jsonl_blank_lines_keep_numbers",
            b"\n" + good.replace(b"\n", b"\n  \n\t\n", 1) + b"[]\n",
            "jsonl",
            codes={6: "malformed_record"},
            messages={6: "line 6 is an array"},
        ),
        Case(
            "jsonl_nothing_but_garbage",
            b"hello\nworld\n",
            "jsonl",
            reason="unreadable_file",
            detail=("line 1 is not valid JSON",),
        ),
        Case("jsonl_empty_objects_only", b"{}\n{ }\n", "jsonl", status="empty"),
        Case(
            "json_trailing_garbage",
            json_of([nested(0)]) + b"\n,{}",
            "json",
            reason="unreadable_file",
            detail=("line 2, column 1",),
        ),
        Case(
            "json_truncated",
            json_of([nested(0), nested(1)])[:-1],
            "json",
            reason="unreadable_file",
            detail=("expected ',' or ']'", "at the end of the file"),
        ),
        Case(
            "json_cut_inside_a_string",
            json_of([nested(0), nested(1)])[:-40],
            "json",
            reason="unreadable_file",
            detail=("Unterminated string", "byte 214"),
        ),
        Case(
            "json_missing_comma",
            json_of([nested(0), nested(1)]).replace(b"}}, {", b"}} {"),
            "json",
            reason="unreadable_file",
            detail=("expected ',' or ']'",),
        ),
        Case(
            "json_non_objects_among_objects",
            json_of([nested(0), 7, "x", None, [nested(1)], True, nested(2)]),
            "json",
            codes=dict.fromkeys(range(2, 7), "malformed_record"),
            messages={2: "element 2 is a number", 5: "element 5 is an array", 6: "element 6 is a boolean"},
        ),
        Case("json_only_non_objects", b"[1, 2, 3]", "json", reason="unreadable_file", detail=("element 1",)),
        Case(
            "json_top_level_object",
            json.dumps(nested(0)).encode(),
            "json",
            reason="unreadable_file",
            detail=("one JSON object",),
        ),
        Case(
            "json_nan_element",
            json_of([nested(0), nested(1)]).replace(b'"value": 1', b'"value": NaN'),
            "json",
            codes={2: "malformed_record"},
        ),
    ]


def _mixed_type_cases() -> list[Case]:
    properties = [
        {"feature": "api"},
        5,
        "text",
        ["a"],
        '{"feature": "seats"}',
        None,
        True,
        {"deep": {"x": [1]}},
    ]
    records = [chargebee(i, properties=p) for i, p in enumerate(properties)]
    invalid = {2: "invalid_properties", 3: "invalid_properties", 4: "invalid_properties",
               6: "missing_required_field", 7: "invalid_properties"}  # fmt: skip
    values = [3, "4.5", {"n": 1}, [1], True, None, "1e3", 12345678901234567890123]
    stripes = [nested(i, payload={"stripe_customer_id": "cus_1", "value": v}) for i, v in enumerate(values)]
    bad_values = {3: "invalid_value", 4: "invalid_value", 5: "invalid_value", 8: "invalid_value"}
    timestamps = [S, float(S), str(S), f"{S}.0", S * 1000, 10**30, "soon", -(10**20), S + 0.5, 1.7723664e9]
    times = [stripe(i, timestamp=t) for i, t in enumerate(timestamps)]
    bad_times = dict.fromkeys(range(4, 10), "invalid_timestamp")  # not 3: an integer in a string is one
    identifiers = [stripe(i, identifier=x) for i, x in enumerate(["a", 17, 1.5, {"x": 1}, None, True])]
    return [
        Case("chargebee_jsonl_properties_of_every_type", jsonl_of(records), "jsonl", codes=invalid),
        Case("chargebee_json_properties_of_every_type", json_of(records), "json", codes=invalid),
        Case("chargebee_csv_properties_of_every_type", csv_of(records), "csv", codes=invalid),
        Case("stripe_jsonl_values_of_every_type", jsonl_of(stripes), "jsonl", codes=bad_values),
        Case("stripe_json_values_of_every_type", json_of(stripes), "json", codes=bad_values),
        Case("stripe_jsonl_timestamps_of_every_type", jsonl_of(times), "jsonl", codes=bad_times),
        Case("stripe_jsonl_identifiers_of_every_type", jsonl_of(identifiers), "jsonl"),
        Case(
            "stripe_jsonl_payload_object_or_string",
            jsonl_of(
                [nested(0), nested(1, payload="cus_1"), nested(2, payload=None), nested(3, payload=[1])]
            ),
            "jsonl",
            codes=dict.fromkeys((2, 3, 4), "missing_required_field"),
        ),
        Case(
            "stripe_jsonl_flat_and_nested_payload",
            jsonl_of([nested(0, payload_value="9"), stripe(1), nested(2, payload_region="eu")]),
            "jsonl",
        ),
    ]


def _gzip_cases() -> list[Case]:
    rows = csv_of([stripe(i) for i in range(3)])
    lines = jsonl_of([nested(i) for i in range(3)])
    bomb = deflate_bomb(50_000_000, b"e,1,a,c,1\n")
    return [
        Case(
            "gzip_bomb",
            gzip.compress(rows) + bomb,
            "csv.gz",
            reason="file_too_large",
            detail=("1,000,000 bytes",),
            limits=SMALL,
        ),
        Case("gzip_bomb_named_csv", bomb, "csv", reason="file_too_large", limits=SMALL),
        Case(
            "gzip_bomb_named_jsonl",
            deflate_bomb(50_000_000, b"{}\n"),
            "jsonl",
            reason="file_too_large",
            limits=SMALL,
        ),
        Case("gzip_bomb_inside_gzip", gzip.compress(bomb), "csv.gz", reason="file_too_large", limits=SMALL),
        Case("gzip_under_a_csv_name", gzip.compress(rows), "csv"),
        Case("gzip_under_a_jsonl_name", gzip.compress(lines), "jsonl"),
        Case("gzip_in_gzip", gzip.compress(gzip.compress(rows)), "csv.gz"),
        Case("gzip_three_layers", gzip.compress(gzip.compress(gzip.compress(lines))), "jsonl.gz"),
        Case(
            "gzip_four_layers",
            gzip.compress(gzip.compress(gzip.compress(gzip.compress(rows)))),
            "csv.gz",
            reason="unreadable_file",
            detail=("more than 3 layers",),
        ),
        Case("gzip_multi_member", gzip.compress(rows) + gzip.compress(rows.split(b"\n", 1)[1]), "csv.gz"),
        Case("gzip_zero_padding", gzip.compress(rows) + b"\x00" * 512, "csv.gz"),
        Case(
            "gzip_truncated",
            gzip.compress(rows)[:-6],
            "csv.gz",
            reason="unreadable_file",
            detail=("before the end-of-stream marker",),
        ),
        Case(
            "gzip_trailing_garbage",
            gzip.compress(rows) + b"garbage",
            "csv.gz",
            reason="unreadable_file",
            detail=("are not gzip",),
        ),
        Case("gz_name_without_gzip", rows, "csv.gz", reason="unreadable_file", detail=("1f 8b",)),
    ]


def _layout_cases() -> list[Case]:
    both = {**stripe(0), **chargebee(0)}
    odd_keys = {"identifier": "e0", "timestamp": S, "event_name": "api_call",
                "payload": {"stripe_customer_id": "cus_1", "a/b": 1, "t~0": 2, "quote\"d": 3, "": 4,
                            "ünï": 5, "k" * 300: 6}}  # fmt: skip
    return [
        Case(
            "csv_duplicate_timestamp_header",
            to_csv([[*STRIPE_COLUMNS, "timestamp"], ["e0", S, "api_call", "cus_1", 1, S]]),
            "csv",
            reason="unreadable_file",
            detail=("'timestamp'", "columns 2, 6"),
        ),
        Case(
            "csv_duplicate_empty_header",
            to_csv([[*STRIPE_COLUMNS, "", ""], ["e0", S, "a", "c", 1, 2, 3]]),
            "csv",
            reason="unreadable_file",
            detail=("''",),
        ),
        Case(
            "csv_both_layouts",
            csv_of([both]),
            "csv",
            reason="unknown_layout",
            detail=(
                "Stripe (timestamp, event_name, payload_stripe_customer_id)",
                "Chargebee (subscription_id, usage_timestamp, deduplication_id)",
            ),
        ),
        Case(
            "jsonl_both_layouts_in_one_file",
            jsonl_of([stripe(0), chargebee(1)]),
            "jsonl",
            reason="unknown_layout",
            detail=("both layouts",),
        ),
        Case(
            "jsonl_keys_that_differ_in_case",
            jsonl_of([{**stripe(0), "Timestamp": "x", "EVENT_NAME": 5}]),
            "jsonl",
        ),
        Case("jsonl_odd_payload_keys", jsonl_of([odd_keys]), "jsonl"),
        Case(
            "csv_odd_payload_columns",
            to_csv(
                [
                    [*STRIPE_COLUMNS, "payload_a b", 'payload_"q"', "payload_ü"],
                    ["e0", S, "api_call", "cus_1", 1, "x", "y", "z"],
                ]
            ),
            "csv",
        ),
        Case(
            "jsonl_unknown_keys_only",
            jsonl_of([{"user": "u1", "amount": 5}]),
            "jsonl",
            reason="unknown_layout",
            detail=("user, amount",),
        ),
    ]


def _size_cases() -> list[Case]:
    long_note = "n" * 200_000
    return [
        Case(
            "csv_huge_value",
            csv_of([stripe(0, payload_note=long_note), stripe(1)]),
            "csv",
            codes={1: "properties_too_large"},
        ),
        Case(
            "jsonl_huge_garbage_line",
            jsonl_of([nested(0)]) + b"x" * 300_000 + b"\n",
            "jsonl",
            codes={2: "malformed_record"},
        ),
        Case("jsonl_huge_valid_line", jsonl_of([nested(0, note="é" * 100_000), nested(1)]), "jsonl"),
        Case(
            "json_huge_element",
            json_of([chargebee(0, properties={"k": "v" * 500_000}), chargebee(1)]),
            "json",
            codes={1: "properties_too_large"},
        ),
        Case(
            "csv_two_megabyte_line",
            to_csv([[*STRIPE_COLUMNS, "payload_x"], ["e0", S, "a", "c", 1, "y" * 2_000_000]]),
            "csv",
            codes={1: "properties_too_large"},
        ),
    ]


CASES = [*_ragged_cases(), *_encoding_cases(), *_json_cases(), *_mixed_type_cases(), *_gzip_cases(),
         *_layout_cases(), *_size_cases()]  # fmt: skip


def parse(case: Case) -> ParsedFile:
    name = f"corpus/{case.name}.{case.fmt}"
    return parse_file(case.data, FileVersion(name, "etag", len(case.data), ARRIVED), case.fmt, case.limits)


def test_the_corpus_is_large_and_its_names_unique() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case) -> None:
    parsed = parse(case)
    if case.reason is not None:
        assert (parsed.status, parsed.failed_reason) == ("failed", case.reason), parsed.failed_detail
        assert parsed.failed_detail and len(parsed.failed_detail) <= 500
        for part in case.detail:
            assert part in parsed.failed_detail
        assert parsed.rows_total == 0 and len(parsed.events) == 0 and len(parsed.rejects) == 0
        return
    assert parsed.status == case.status, (parsed.failed_reason, parsed.failed_detail)
    assert parsed.rows_total == count_records(case.data, case.fmt)
    assert parsed.rows_total == len(parsed.events) + parsed.rows_duplicate_in_file + len(parsed.rejects)
    assert dict(parsed.rejects.select("source_row", "error_code").iter_rows()) == case.codes
    messages = dict(parsed.rejects.select("source_row", "error_message").iter_rows())
    for row, start in case.messages.items():
        assert messages[row].startswith(start), messages[row]
    for raw in parsed.rejects["raw_record"]:
        assert len(raw.encode()) <= 4096
    for message in parsed.rejects["error_message"]:
        assert len(message.encode()) <= 1024


def test_huge_rejected_records_keep_4_kib_and_say_so() -> None:
    case = next(c for c in CASES if c.name == "jsonl_huge_garbage_line")
    raw = parse(case).rejects["raw_record"][0]
    assert len(raw.encode()) <= 4096 and raw.startswith("xxxx")
    assert raw.endswith("…[truncated from 300000 bytes]")


def test_odd_keys_are_kept_as_properties() -> None:
    events = parse(next(c for c in CASES if c.name == "jsonl_odd_payload_keys")).events
    properties = json.loads(events["properties"][0])
    assert properties == {"a/b": "1", "t~0": "2", 'quote"d': "3", "": "4", "ünï": "5", "k" * 300: "6"}
    columns = parse(next(c for c in CASES if c.name == "csv_odd_payload_columns")).events["properties"][0]
    assert json.loads(columns) == {"value": "1", "a b": "x", '"q"': "y", "ü": "z"}


def test_mixed_timestamp_types_are_judged_by_their_json_type() -> None:
    parsed = parse(next(c for c in CASES if c.name == "stripe_jsonl_timestamps_of_every_type"))
    # A JSON number with an integral value is that integer; the same text in a string is not an epoch.
    assert sorted(parsed.events["source_row"].to_list()) == [1, 2, 3, 10]
    messages = dict(parsed.rejects.select("source_row", "error_message").iter_rows())
    assert "looks like milliseconds" in messages[5]
    assert "outside the range of a 64-bit integer" in messages[6]


# --- generated files with errors --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [4, 1, 11])
@pytest.mark.parametrize("fmt", ["json", "jsonl", "json.gz", "jsonl.gz"])
def test_generated_chargebee_json_with_errors_never_fails_the_file(fmt: str, seed: int) -> None:
    data = generate_usage_file(
        layout="chargebee", fmt=fmt, rows=3000, arrival=ARRIVED, seed=seed, error_rate=0.02
    )
    case = Case(f"generated_{seed}", data, fmt)
    parsed = parse(case)
    assert parsed.status == "ok", parsed.failed_detail
    assert parsed.rows_total == count_records(data, fmt) == 3000
    assert len(parsed.events) == 3000 - 60  # every row but the 2 % the generator broke
    assert parsed.rows_duplicate_in_file == 0
    assert Counter(parsed.rejects["error_code"]).keys() <= {
        "missing_required_field", "invalid_timestamp", "timestamp_too_far_in_past", "timestamp_in_future",
        "invalid_properties", "properties_too_large",
    }  # fmt: skip
