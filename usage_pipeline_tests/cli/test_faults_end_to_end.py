"""Nothing is lost when S3 misbehaves or the store is held: files wait, are retried, and end exactly once.

S3 is moto's server behind a loopback proxy that fails a share of LIST and GET requests (500, 503
SlowDown, connection reset, cut-off body); the busy store is a real second process holding the DuckDB file.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from usage_pipeline.cli.generate import generate_usage_file
from usage_pipeline.cli.ingest import run_ingest
from usage_pipeline.definitions import build_definitions
from usage_pipeline_tests.cli.faulty_s3 import faulty_s3_proxy
from usage_pipeline_tests.conftest import put

pytestmark = pytest.mark.slow

LAYOUTS = [("stripe", "csv"), ("chargebee", "jsonl"), ("stripe", "json.gz"), ("chargebee", "csv.gz")]


def upload(s3, bucket: str, n: int, rows: int = 400, prefix: str = "incoming/") -> dict[str, int]:
    """Valid, unique events only: every row of every file must end accepted. key -> rows."""
    arrival = datetime.now(UTC)
    sizes = {}
    for i in range(n):
        layout, fmt = LAYOUTS[i % len(LAYOUTS)]
        key = f"{prefix}f{i:02d}.{fmt}"
        body = generate_usage_file(layout=layout, fmt=fmt, rows=rows, arrival=arrival, seed=i, key_hint=key)
        put(s3, bucket, key, body)
        sizes[key] = rows
    return sizes


def ledger_counts(path: str) -> dict[str, tuple[int, str, int, int]]:
    with duckdb.connect(path, read_only=True) as conn:
        rows = conn.execute(
            "SELECT file_key, count(*), any_value(status), sum(rows_total), sum(rows_accepted) "
            "FROM ingested_files GROUP BY file_key"
        ).fetchall()
        events = dict(conn.execute("SELECT source_file, count(*) FROM usage_events GROUP BY ALL").fetchall())
    return {key: (n, status, total, events.get(key, 0)) for key, n, status, total, _ in rows}


def test_every_file_is_ingested_exactly_once_through_a_faulty_s3(instance, settings, s3, bucket):
    sizes = upload(s3, bucket, 15)
    with faulty_s3_proxy(str(settings.s3_endpoint_url), fail_rate=0.35, seed=7) as proxy:
        # Few client attempts, so that faults outlast botocore's retries and reach the product.
        flaky = settings.model_copy(
            update={"s3_endpoint_url": proxy.url, "s3_max_attempts": 2, "retry_backoff": timedelta(0)}
        )
        defs = build_definitions(flaky)
        rounds = []
        for _ in range(40):
            try:
                result = run_ingest(instance, defs, flaky)
            except Exception as exc:  # a listing that failed past its retries: the next round lists again
                rounds.append(type(exc).__name__)
                continue
            rounds.append((len(result.outcomes), len(result.waiting), len(result.failed_runs)))
            if len(ledger_counts(flaky.duckdb_path)) == len(sizes) and not result.waiting:
                break
        assert proxy.injected > 0
    ledger = ledger_counts(settings.duckdb_path)
    assert sorted(ledger) == sorted(sizes), rounds
    for key, (versions, status, total, events) in ledger.items():
        assert (versions, status, total, events) == (1, "succeeded", sizes[key], sizes[key]), key
    # The faults did reach the product (files waited and were retried), and nothing is waiting now.
    assert any(isinstance(r, str) or r[1] or r[2] for r in rounds), rounds
    with duckdb.connect(settings.duckdb_path, read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM file_attempts").fetchall()[0][0] == 0
    again = run_ingest(instance, build_definitions(settings), settings)
    assert again.outcomes == [] and again.waiting == [] and again.deferred == 0


HOLD = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1], read_only=True)
conn.execute("SELECT count(*) FROM ingested_files").fetchall()
print("holding", flush=True)
sys.stdin.readline()
"""


def test_an_analyst_holding_the_store_delays_files_but_never_loses_them(instance, settings, s3, bucket):
    first = upload(s3, bucket, 1, prefix="incoming/a/")
    settings = settings.model_copy(
        update={"duckdb_lock_timeout": timedelta(seconds=1), "retry_backoff": timedelta(0)}
    )
    defs = build_definitions(settings)
    assert run_ingest(instance, defs, settings).exit_code == 0
    later = upload(s3, bucket, 2, prefix="incoming/b/")

    analyst = subprocess.Popen(
        [sys.executable, "-c", HOLD, settings.duckdb_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert analyst.stdout is not None and analyst.stdout.readline().strip() == "holding"
        held = [run_ingest(instance, defs, settings) for _ in range(4)]  # more than any old attempt limit
    finally:
        analyst.communicate("\n", timeout=30)
    # Every evaluation said so and exited 1; the first run's failure names the store and what to check.
    assert all(r.exit_code == 1 for r in held)
    assert {w.key for w in held[0].waiting} == set(later)
    failure = held[0].failed_runs[0]
    records = instance.get_records_for_run(failure, of_type=dg.DagsterEventType.STEP_FAILURE).records
    message = records[0].event_log_entry.dagster_event.step_failure_data.error.message
    assert message.startswith("dagster._core.definitions.events.Failure: DuckDB: the file"), message
    assert "USAGE_DUCKDB_LOCK_TIMEOUT" in message
    # While it waited, the step said so, on what.
    said = [e.user_message for e in instance.all_logs(failure)]
    assert any(m.startswith("waiting for the DuckDB file") and "locked" in m for m in said), said

    time.sleep(0.01)
    done = run_ingest(instance, defs, settings)
    assert done.exit_code == 0, (done.waiting, done.failed_runs)
    ledger = ledger_counts(settings.duckdb_path)
    assert sorted(ledger) == sorted({**first, **later})
    assert all(n == 1 and status == "succeeded" for n, status, _, _ in ledger.values())
