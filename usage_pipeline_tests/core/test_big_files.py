"""Big files read in chunks (a small chunk size forced): the same outcome, rows, rejects and counts as one
piece, inside one transaction per file that a retried commit writes once."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from usage_pipeline.core.ingest.model import FileVersion, ParsedFile, ValidationLimits
from usage_pipeline.core.ingest.parse import parse_file
from usage_pipeline.core.ingest.runner import ingest_files
from usage_pipeline.core.storage import lake as lake_module
from usage_pipeline.core.storage.lake import connect
from usage_pipeline_tests.conftest import tmp_lake

ARRIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T0 = int((ARRIVED - timedelta(days=1)).timestamp())
CHUNK = 4096  # bytes: the files below span dozens of chunks


def chargebee_csv(rows: int) -> bytes:
    """Chargebee CSV: multi-line quoted properties, blank lines, duplicates of earlier rows, bad rows."""
    lines = ["subscription_id,usage_timestamp,deduplication_id,properties"]
    for i in range(rows):
        ts = (T0 + i) * 1000
        if i % 97 == 5:
            lines.append(f"sub_{i % 7},{ts},d{i}")  # too few fields
        elif i % 89 == 3:
            lines.append(f'sub_{i % 7},{ts},d{i},"{{""a"":""x\ny""}}",extra')  # too many, quoted newline
        elif i % 53 == 7:
            lines.append(f"sub_{i % 7},{ts // 1000},d{i},{{}}")  # seconds: invalid_timestamp
        elif i % 41 == 0 and i:
            j = i - 37 * (i % 3 + 1)  # a copy of a row some chunks earlier
            lines.append(f'sub_{j % 7},{(T0 + j) * 1000},d{j},"{{""feature"":""storage"",""gb"":{j}}}"')
        else:
            lines.append(
                f'sub_{i % 7},{ts},d{i},"{{""feature"":""storage"",\n""gb"":{i}}}"'
                if i % 3 == 0
                else f'sub_{i % 7},{ts},d{i},"{{""feature"":""storage"",""gb"":{i}}}"'
            )
        if i % 61 == 0:
            lines.append("")
    return ("\n".join(lines) + "\n").encode()


def stripe_jsonl(rows: int) -> bytes:
    lines = []
    for i in range(rows):
        ts = T0 + i
        if i % 83 == 4:
            lines.append("{broken")
        elif i % 79 == 2:
            lines.append("[1, 2]")
        elif i % 43 == 0 and i:
            j = i - 41 * (i % 4 + 1)
            lines.append(
                json.dumps(
                    {
                        "identifier": f"e{j}",
                        "timestamp": T0 + j + 5,
                        "event_name": "api_call",
                        "payload": {"stripe_customer_id": f"cus_{j % 5}", "value": j},
                    }
                )
            )
        elif i % 2:
            lines.append(
                json.dumps(
                    {
                        "identifier": f"e{i}",
                        "timestamp": ts,
                        "event_name": "api_call",
                        "payload": {"stripe_customer_id": f"cus_{i % 5}", "value": i},
                    }
                )
            )
        else:
            extra = {"payload_region": "eu"} if i % 10 == 0 else {}
            lines.append(
                json.dumps(
                    {
                        "identifier": f"e{i}",
                        "timestamp": ts if i % 59 else "soon",
                        "event_name": "api_call",
                        "payload_stripe_customer_id": f"cus_{i % 5}",
                        "payload_value": str(i),
                        **extra,
                    }
                )
            )
        if i % 67 == 0:
            lines.append("   ")
    return ("\n".join(lines) + "\n").encode()


def parse(data: bytes, fmt: str, chunk_bytes: int | None = None) -> ParsedFile:
    file = FileVersion(f"incoming/big.{fmt}", "e1", len(data), ARRIVED)
    if chunk_bytes is None:
        return parse_file(data, file, fmt, ValidationLimits())
    return parse_file(data, file, fmt, ValidationLimits(), chunk_bytes=chunk_bytes)


def frame(batches: list[pl.DataFrame], empty: pl.DataFrame) -> pl.DataFrame:
    return pl.concat(batches) if batches else empty


def assert_same(one: ParsedFile, many: ParsedFile) -> None:
    try:
        for name in ("status", "layout", "failed_reason", "failed_detail", "rows_total"):
            assert getattr(many, name) == getattr(one, name), name
        assert many.rows_duplicate_in_file == one.rows_duplicate_in_file
        assert_frame_equal(frame(list(many.event_batches()), one.events), one.events)
        assert_frame_equal(frame(list(many.reject_batches()), one.rejects), one.rejects)
        assert many.events_count == one.events.height and many.rejects_count == one.rejects.height
    finally:
        many.discard()


@pytest.mark.parametrize("source", ["csv", "csv.gz", "jsonl", "jsonl.gz"])
def test_a_file_in_many_chunks_gives_what_one_piece_gives(source: str) -> None:
    data = chargebee_csv(1500) if source.startswith("csv") else stripe_jsonl(1500)
    if source.endswith(".gz"):
        data = gzip.compress(data)
    one, many = parse(data, source), parse(data, source, CHUNK)
    assert one.status == "ok" and one.spill is None
    assert many.spill is not None and len(many.spill.parts) > 20
    # What the file holds: rejects in many chunks, quoted newlines, duplicates of earlier chunks' rows.
    rejected_chunks = {row // 60 for row in one.rejects["source_row"]}
    assert len(rejected_chunks) > 10
    assert set(one.rejects["error_code"]) >= {"malformed_record", "invalid_timestamp"}
    assert one.rows_duplicate_in_file > 20
    assert sum(p.drop.len() for p in many.spill.parts if p.drop is not None) > 20
    assert_same(one, many)


def test_a_record_boundary_is_never_inside_quotes() -> None:
    header = b"subscription_id,usage_timestamp,deduplication_id,properties\n"
    body = b"".join(
        b'sub_1,%d,d%d,"{""note"":""%s""}"\n' % ((T0 + i) * 1000, i, b"line\n" * 40 + b",\n" * 3)
        for i in range(200)
    )
    data = header + body
    one, many = parse(data, "csv"), parse(data, "csv", 1000)
    assert one.rows_total == 200
    assert_same(one, many)


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        # a stray quote inside an unquoted field: polars refuses, Python's csv reads it, in one piece
        (chargebee_csv(600) + b'sub_1,1772280000000,d"x,{}\n' + chargebee_csv(300)[60:], "csv"),
        # a byte that is not UTF-8 far into the file: unreadable, with the offset in the whole file
        (chargebee_csv(600) + b"sub_1,\xff\xfe,d,{}\n", "csv"),
        # a header that misses a column: the layout failure, after the whole file was found readable
        (b"subscription_id,usage_timestamp,properties\n" + b"s,1772280000000,{}\n" * 900, "csv"),
        # a header, then only blank lines
        (b"subscription_id,usage_timestamp,deduplication_id,properties\n" + b"\n" * 9000, "csv"),
        # JSON Lines with no JSON object at all
        (b"[1]\n" * 3000, "jsonl"),
        # JSON Lines whose later records bring the other layout's marker keys: unknown_layout
        (
            stripe_jsonl(400) + b'{"subscription_id":"s","usage_timestamp":1,"deduplication_id":"d"}\n',
            "jsonl",
        ),
        # JSON Lines whose first chunk lacks a required key that later records have
        (b'{"timestamp": 1, "event_name": "x"}\n' * 300 + stripe_jsonl(300), "jsonl"),
    ],
    ids=["stray-quote", "bad-utf8", "missing-column", "header-only", "no-object", "both-layouts", "late-key"],
)
def test_files_a_chunk_cannot_judge_get_the_one_piece_verdict(data: bytes, fmt: str) -> None:
    one, many = parse(data, fmt), parse(data, fmt, CHUNK)
    assert_same(one, many)


def test_a_json_array_is_read_in_one_piece() -> None:
    records = [
        {
            "identifier": f"e{i % 250}",
            "timestamp": T0 + i,
            "event_name": "api_call",
            "payload": {"stripe_customer_id": "cus_1", "value": i},
        }
        for i in range(300)
    ]
    data = json.dumps(records).encode()
    many = parse(data, "json", CHUNK)
    assert many.spill is None and many.rows_duplicate_in_file == 50
    assert_same(parse(data, "json"), many)


def lake_state(conn) -> dict[str, list[tuple]]:
    queries = {
        "files": "SELECT file_key, status, layout, rows_total, rows_accepted, rows_duplicate, rows_rejected, "
        "failed_reason FROM ingested_files ORDER BY file_key",
        "events": "SELECT event_id, layout, customer_id, subscription_id, ts, properties, source_file, "
        "source_row FROM usage_events ORDER BY source_file, source_row",
        "rejects": "SELECT source_file, source_row, error_code, error_message, raw_record "
        "FROM rejected_events ORDER BY source_file, source_row",
        "attempts": "SELECT count(*) FROM file_attempts",
    }
    return {name: conn.execute(q).fetchall() for name, q in queries.items()}


def ingest(folder: Path, blobs: dict[str, bytes], chunk_bytes: int, fail_commits: int = 0) -> dict:
    files = [
        FileVersion(key, "e1", len(data), ARRIVED + timedelta(seconds=i))
        for i, (key, data) in enumerate(blobs.items())
    ]
    with connect(tmp_lake(folder)) as conn:
        original = lake_module._check_turn
        failures = [fail_commits]

        def flaky_turn(writer):  # a commit lost to another writer, `fail_commits` times: retried whole
            if failures[0]:
                failures[0] -= 1
                raise lake_module.TurnLostError("another writer committed first")
            original(writer)

        lake_module._check_turn = flaky_turn
        try:
            report = ingest_files(
                files,
                fetch=lambda f: (blobs[f.key], f),
                conn=conn,
                max_file_bytes=1 << 30,
                limits=ValidationLimits(),
                run_id="r1",
                chunk_bytes=chunk_bytes,
            )
        finally:
            lake_module._check_turn = original
        assert failures[0] == 0
        assert not report.unavailable
        return lake_state(conn)


def test_chunked_ingest_writes_the_same_lake_and_a_retried_commit_writes_once(tmp_path: Path) -> None:
    blobs = {
        "incoming/a.csv": chargebee_csv(1200),
        "incoming/b.jsonl.gz": gzip.compress(stripe_jsonl(1200)),
        "incoming/c.csv": chargebee_csv(300),  # the same events again: duplicates of stored history
    }
    spilled_before = set(Path(tempfile.gettempdir()).glob("usage-ingest-*"))
    whole = ingest(tmp_path / "whole", blobs, chunk_bytes=64 << 20)
    chunked = ingest(tmp_path / "chunked", blobs, chunk_bytes=CHUNK, fail_commits=2)
    assert chunked == whole
    files = {row[0]: row for row in whole["files"]}
    assert files["incoming/c.csv"][4] == 0 and files["incoming/c.csv"][5] > 0
    assert whole["attempts"] == [(0,)]
    assert len(whole["events"]) == sum(row[4] for row in whole["files"])
    assert set(Path(tempfile.gettempdir()).glob("usage-ingest-*")) <= spilled_before  # nothing left behind


# A process that dies inside a big file's transaction: after the file's events went in (their Parquet
# files are already on disk), before the rejects, the ledger row and the commit.
KILLED_CHILD = """
import os, signal, sys
from pathlib import Path
from usage_pipeline.core.ingest import store
from usage_pipeline_tests.core import test_big_files as t

insert_events = store._insert_events

def insert_then_die(*args, **kwargs):
    insert_events(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

store._insert_events = insert_then_die
t.ingest(Path(sys.argv[1]), {"incoming/a.csv": t.chargebee_csv(1200)}, chunk_bytes=t.CHUNK)
"""


def test_a_process_killed_inside_a_big_files_transaction_leaves_no_trace_but_its_attempt(
    tmp_path: Path,
) -> None:
    blobs = {"incoming/a.csv": chargebee_csv(1200)}
    (tmp_path / "tmp").mkdir()  # what the killed process leaves in its temporary folder stays in tmp_path
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, str(tmp_path / "lake")],
        cwd=Path(__file__).parents[2],
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with connect(tmp_lake(tmp_path / "lake")) as conn:
        left = lake_state(conn)
    assert left == {"files": [], "events": [], "rejects": [], "attempts": [(1,)]}
    again = ingest(tmp_path / "lake", blobs, chunk_bytes=CHUNK)  # the next run: the whole file, once
    assert again == ingest(tmp_path / "whole", blobs, chunk_bytes=64 << 20)
    assert again["attempts"] == [(0,)] and again["files"][0][4] > 1000


def test_a_dropped_repeat_does_not_widen_the_window_history_is_searched_in(tmp_path: Path) -> None:
    # The file's own time range decides which stored events can be twins (± the Stripe window). A repeat
    # dropped from a later chunk lies an hour earlier than every event kept: it must not widen the range,
    # else the stored "y" (24 h 10 min before the first kept event) would make the new "y" a duplicate.
    header = "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value\n"
    history = header + f"y,{T0 - 86400 - 600},api_call,cus_1,1\n"
    rows = [f"x,{T0 + 100},api_call,cus_1,1", f"y,{T0 + 200},api_call,cus_1,1"]
    rows += [f"e{i},{T0 + 300 + i},api_call,cus_2,{i}" for i in range(400)]
    rows.append(f"x,{T0 - 3600},api_call,cus_1,1")  # the repeat: an earlier key, a later chunk
    blobs = {"incoming/a.csv": history.encode(), "incoming/b.csv": (header + "\n".join(rows) + "\n").encode()}
    whole = ingest(tmp_path / "whole", blobs, chunk_bytes=64 << 20)
    assert ("y", 2) in {(e[0], e[7]) for e in whole["events"] if e[6] == "incoming/b.csv"}
    assert ingest(tmp_path / "chunked", blobs, chunk_bytes=1024) == whole
