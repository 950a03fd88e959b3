"""Small files share a transaction (write_file_group): each still commits whole with its ledger row, and
the lake ends up exactly as one transaction per file would have left it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from usage_pipeline.core.ingest import runner, store
from usage_pipeline.core.ingest.model import FileVersion, ParsedFile, ValidationLimits
from usage_pipeline.core.ingest.parse import parse_file
from usage_pipeline.core.ingest.runner import ingest_files
from usage_pipeline.core.ingest.store import write_file_group, write_file_version
from usage_pipeline.core.storage.lake import connect
from usage_pipeline_tests.conftest import tmp_lake

ARRIVAL = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LIMITS = ValidationLimits(timedelta(days=35), timedelta(hours=1), 1 << 30)
STRIPE_HEADER = "identifier,event_name,payload_stripe_customer_id,payload_value,timestamp"
CHARGEBEE_HEADER = "subscription_id,deduplication_id,usage_timestamp,properties"


def _epoch(hours_before: float) -> int:
    return int((ARRIVAL - timedelta(hours=hours_before)).timestamp())


def stripe_csv(rows: list[tuple[str, str, str, int]]) -> bytes:
    """(identifier, customer, value, epoch seconds) rows."""
    lines = [f"{i},api_call,{c},{v},{ts}" for i, c, v, ts in rows]
    return "\n".join([STRIPE_HEADER, *lines, ""]).encode()


def chargebee_csv(rows: list[tuple[str, str, int, str]]) -> bytes:
    """(subscription, dedup id, epoch milliseconds, quantity) rows."""
    lines = [f'{s},{d},{ts},"{{""quantity"": ""{q}""}}"' for s, d, ts, q in rows]
    return "\n".join([CHARGEBEE_HEADER, *lines, ""]).encode()


def corpus() -> dict[FileVersion, bytes]:
    """Files of both layouts whose events repeat within a file, across files (Stripe twins an hour or
    two apart, inside the 24 h window; one 4 days apart, outside it), with bad rows, a failed file and an
    empty one: every way a row can end."""
    files: dict[str, bytes] = {}
    for n in range(12):
        rows = [(f"evt_{n}_{j}", f"cus_{j % 3}", str(j), _epoch(j)) for j in range(20)]
        rows.append((f"evt_{n - 1}_5", "cus_2", "5", _epoch(7)))  # the previous file's event, 2 h later
        rows.append((f"evt_{n}_0", "cus_0", "0", _epoch(0)))  # in-file duplicate
        rows.append((f"evt_{n}_bad", "cus_1", "not-a-number", _epoch(1)))  # rejected: invalid_value
        files[f"in/stripe-{n:02}.csv"] = stripe_csv(rows)
    for n in range(6):
        ms = _epoch(3) * 1000
        rows_cb = [(f"sub_{j % 2}", f"d{j}", ms + j, "1.5") for j in range(10)]
        rows_cb.append(("sub_0", "d0", ms, "1.5"))  # every file repeats d0: a twin of the first file's
        files[f"in/chargebee-{n:02}.csv"] = chargebee_csv(rows_cb)
    # One identifier 4 days apart, in files whose windows do not reach each other: two events.
    files["in/far-early.csv"] = stripe_csv([("evt_far", "cus_9", "1", _epoch(100))])
    files["in/far-late.csv"] = stripe_csv([("evt_far", "cus_9", "1", _epoch(0))])
    files["in/broken.csv"] = b"who,knows\n1,2\n"
    files["in/empty.csv"] = b""
    return {
        FileVersion(key, f"etag-{i}", len(data), ARRIVAL + timedelta(seconds=i)): data
        for i, (key, data) in enumerate(files.items())
    }


def parsed_corpus() -> list[ParsedFile]:
    return [parse_file(data, file, "csv", LIMITS) for file, data in corpus().items()]


def lake_state(conn: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    """Everything the writes left, without the columns that say when."""
    return {
        "events": conn.execute("SELECT * EXCLUDE (ingested_at) FROM usage_events ORDER BY ALL").fetchall(),
        "rejects": conn.execute(
            "SELECT * EXCLUDE (ingested_at) FROM rejected_events ORDER BY ALL"
        ).fetchall(),
        "ledger": conn.execute(
            "SELECT * EXCLUDE (ingested_at, run_id) FROM ingested_files ORDER BY ALL"
        ).fetchall(),
        "attempts": conn.execute("SELECT * FROM file_attempts").fetchall(),
    }


def test_a_group_stores_exactly_what_one_transaction_per_file_stores(tmp_path: Path) -> None:
    parsed = parsed_corpus()
    with connect(tmp_lake(tmp_path / "each")) as conn:
        one_by_one = [write_file_version(conn, p, run_id="r") for p in parsed]
        expected = lake_state(conn)
    with connect(tmp_lake(tmp_path / "group")) as conn:
        grouped = write_file_group(conn, parsed, run_id="r")
        assert lake_state(conn) == expected
    assert grouped == one_by_one
    # The corpus exercises every ending: cross-file twins, in-file twins, rejects, failed, empty.
    assert sum(o.rows_duplicate for o in grouped) > 12 + 5 + 6
    assert {o.status for o in grouped} == {"succeeded", "succeeded_with_errors", "failed", "skipped_empty"}
    far = [row for row in expected["events"] if row[0] == "evt_far"]
    assert len(far) == 2  # 4 days apart: outside the window, both stored, in a group as one by one


def test_a_group_commits_together_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = parsed_corpus()

    def crash(*_: object) -> None:  # the last statement of the group, after every insert
        raise RuntimeError("the process died here")

    with connect(tmp_lake(tmp_path)) as conn:
        monkeypatch.setattr(store, "delete_attempts", crash)
        with pytest.raises(RuntimeError):
            write_file_group(conn, parsed, run_id="r")
        assert lake_state(conn) == {"events": [], "rejects": [], "ledger": [], "attempts": []}
        monkeypatch.undo()
        write_file_group(conn, parsed, run_id="r")  # the retry stores everything once
        assert len(lake_state(conn)["ledger"]) == len(parsed)


def test_versions_already_in_the_ledger_are_reported_and_left_alone(tmp_path: Path) -> None:
    first, second, *_ = parsed_corpus()
    with connect(tmp_lake(tmp_path)) as conn:
        alone = write_file_version(conn, first, run_id="r1")
        before = lake_state(conn)
        again, new = write_file_group(conn, [first, second], run_id="r2")
        assert again.already_ingested and not new.already_ingested
        assert (again.rows_accepted, again.rows_duplicate) == (alone.rows_accepted, alone.rows_duplicate)
        after = lake_state(conn)
    assert [r for r in after["events"] if r[7] == first.file.key] == [
        r for r in before["events"] if r[7] == first.file.key
    ]


def fetch_from(files: dict[FileVersion, bytes]):
    return lambda file: (files[file], file)


def test_ingest_groups_small_files_and_writes_a_big_one_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = corpus()
    groups: list[int] = []
    singles: list[str] = []
    real_group, real_single = runner.write_file_group, runner.write_file_version

    def group(conn, parsed, **kw):
        groups.append(len(parsed))
        return real_group(conn, parsed, **kw)

    def single(conn, parsed, **kw):
        singles.append(parsed.file.key)
        return real_single(conn, parsed, **kw)

    monkeypatch.setattr(runner, "write_file_group", group)
    monkeypatch.setattr(runner, "write_file_version", single)
    monkeypatch.setattr(runner, "GROUP_MAX_ROWS", 100)  # 20-odd rows a file: 4 files a group
    big = FileVersion("in/big.csv", "etag-big", 0, ARRIVAL + timedelta(minutes=5))
    files[big] = stripe_csv([(f"big_{j}", "cus_1", "1", _epoch(1)) for j in range(150)])
    with connect(tmp_lake(tmp_path)) as conn:
        report = ingest_files(
            list(files), fetch=fetch_from(files), conn=conn, max_file_bytes=1 << 30, limits=LIMITS, run_id="r"
        )
        ledger = conn.execute("SELECT count(*) FROM ingested_files").fetchone()
    assert ledger == (len(files),)
    assert [o.key for o in report.outcomes] == [f.key for f in files]  # arrival order
    assert singles == ["in/big.csv"]
    assert sum(groups) == len(files) - 1 and max(groups) > 1


def test_a_group_the_database_refuses_is_written_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = corpus()

    def refuse(*_: object, **__: object) -> None:
        raise duckdb.ConversionException("a value the shared statement cannot take")

    monkeypatch.setattr(runner, "write_file_group", refuse)
    with connect(tmp_lake(tmp_path)) as conn:
        report = ingest_files(
            list(files), fetch=fetch_from(files), conn=conn, max_file_bytes=1 << 30, limits=LIMITS, run_id="r"
        )
        ledger = conn.execute("SELECT count(*) FROM ingested_files").fetchone()
    assert ledger == (len(files),) and len(report.outcomes) == len(files)
