"""Nothing is lost when S3 misbehaves or the store is held: files wait, are retried, and end exactly once.

S3 is moto's server behind a loopback proxy that fails a share of LIST and GET requests (500, 503
SlowDown, connection reset, cut-off body); the busy store is a real second process holding the DuckDB file.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from usage_pipeline.cli.generate import generate_usage_file
from usage_pipeline.cli.ingest import run_ingest
from usage_pipeline.core.storage.lake import read_only
from usage_pipeline.definitions import build_definitions
from usage_pipeline.settings import Settings, lake_of
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


def ledger_counts(settings: Settings) -> dict[str, tuple[int, str, int, int]]:
    with read_only(lake_of(settings)) as conn:
        rows = conn.execute(
            "SELECT file_key, count(*), any_value(status), sum(rows_total), sum(rows_accepted) "
            "FROM ingested_files GROUP BY file_key"
        ).fetchall()
        events = dict(conn.execute("SELECT source_file, count(*) FROM usage_events GROUP BY ALL").fetchall())
    return {key: (n, status, total, events.get(key, 0)) for key, n, status, total, _ in rows}


def test_every_file_is_ingested_exactly_once_through_a_faulty_s3(instance, settings, s3, bucket):
    sizes = upload(s3, bucket, 15)
    with faulty_s3_proxy(str(settings.s3_endpoint_url), fail_rate=0.35, seed=7) as proxy:
        # One client attempt, so that faults reach the product: files load side by side, so which request
        # meets which fault is not fixed by the seed, and with 2 attempts all 15 could get through.
        flaky = settings.model_copy(
            update={"s3_endpoint_url": proxy.url, "s3_max_attempts": 1, "retry_backoff": timedelta(0)}
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
            if len(ledger_counts(flaky)) == len(sizes) and not result.waiting:
                break
        assert proxy.injected > 0
    ledger = ledger_counts(settings)
    assert sorted(ledger) == sorted(sizes), rounds
    for key, (versions, status, total, events) in ledger.items():
        assert (versions, status, total, events) == (1, "succeeded", sizes[key], sizes[key]), key
    # The faults did reach the product (files waited and were retried), and nothing is waiting now.
    assert any(isinstance(r, str) or r[1] or r[2] for r in rounds), rounds
    with read_only(lake_of(settings)) as conn:
        assert conn.execute("SELECT count(*) FROM file_attempts").fetchall()[0][0] == 0
    again = run_ingest(instance, build_definitions(settings), settings)
    assert again.outcomes == [] and again.waiting == [] and again.deferred == 0


HOLD = """
import sys
from usage_pipeline.core.storage.lake import Lake, open_read_only
conn = open_read_only(Lake(catalog=sys.argv[1], data_path=sys.argv[2]))
conn.execute("BEGIN TRANSACTION")  # an analyst's session in the middle of a long read
conn.execute("SELECT count(*) FROM ingested_files").fetchall()
print("holding", flush=True)
sys.stdin.readline()
print(conn.execute("SELECT count(*) FROM ingested_files").fetchall()[0][0], flush=True)
"""


def test_an_analyst_holding_a_session_open_delays_nothing(instance, settings, s3, bucket):
    first = upload(s3, bucket, 1, prefix="incoming/a/")
    defs = build_definitions(settings)
    assert run_ingest(instance, defs, settings).exit_code == 0
    later = upload(s3, bucket, 2, prefix="incoming/b/")

    analyst = subprocess.Popen(
        [sys.executable, "-c", HOLD, settings.lake, settings.lake_data],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert analyst.stdout is not None and analyst.stdout.readline().strip() == "holding"
        started = time.monotonic()
        done = run_ingest(instance, defs, settings)
        took = time.monotonic() - started
    finally:
        out, _ = analyst.communicate("\n", timeout=30)
    # The writer did not wait for the reader (which the one-file DuckDB store made it do) ...
    assert done.exit_code == 0, (done.waiting, done.failed_runs)
    assert took < 60
    # ... and the reader's transaction kept seeing the snapshot it started with.
    assert out.strip() == "1"
    ledger = ledger_counts(settings)
    assert sorted(ledger) == sorted({**first, **later})
    assert all(n == 1 and status == "succeeded" for n, status, _, _ in ledger.values())
