"""The lake with real processes side by side: an analyst reading in a loop while `ingest` and `close`
write, an ingest and a close at the same time, and two `ingest` processes (separate Dagster instances, so
nothing but the lake keeps them apart) given the same files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from usage_pipeline.cli.generate import generate_usage_frame, serialize
from usage_pipeline.settings import Settings
from usage_pipeline_tests.cli.test_cli_processes import assert_each_file_exactly_once, cli_env
from usage_pipeline_tests.conftest import lake_rows, put

pytestmark = pytest.mark.slow

ROWS = 20_000

# The analyst: a read-only session that loops until told to stop. Each round reads in one transaction
# (one snapshot) and checks what a half-written file or close would break:
#   - every ledger row's rows_accepted equals the events stored for that file version (never half a file);
#   - every pending invoice's total and line count equal its line items (never half a close);
#   - within one transaction, a query repeated after a pause returns the same counts (a stable snapshot).
ANALYST = """
import json, sys, time
from pathlib import Path
from usage_pipeline.core.storage.lake import Lake, open_read_only

lake = Lake(catalog=sys.argv[1], data_path=sys.argv[2])
stop = Path(sys.argv[3])
rounds, errors, violations, seen_files, seen_invoices, longest = 0, [], [], 0, 0, 0.0
conn = None
while not stop.exists():
    started = time.monotonic()
    try:
        if conn is None:
            conn = open_read_only(lake)
            if conn is None:
                time.sleep(0.05)
                continue
        conn.execute("BEGIN TRANSACTION")
        half_files = conn.execute(
            "SELECT f.file_key, f.rows_accepted, count(e.source_row) FROM ingested_files f "
            "LEFT JOIN usage_events e ON e.source_file = f.file_key AND e.source_etag = f.etag "
            "GROUP BY ALL HAVING f.rows_accepted <> count(e.source_row)"
        ).fetchall()
        half_closes = conn.execute(
            "SELECT i.invoice_id, i.total, i.line_count, sum(l.amount), count(l.line_item_id) "
            "FROM pending_invoices i LEFT JOIN invoice_line_items l USING (invoice_id) "
            "GROUP BY ALL "
            "HAVING i.total <> coalesce(sum(l.amount), 0) OR i.line_count <> count(l.line_item_id)"
        ).fetchall()
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM ingested_files), (SELECT count(*) FROM usage_events), "
            "(SELECT count(*) FROM pending_invoices)"
        ).fetchall()[0]
        time.sleep(0.02)
        again = conn.execute(
            "SELECT (SELECT count(*) FROM ingested_files), (SELECT count(*) FROM usage_events), "
            "(SELECT count(*) FROM pending_invoices)"
        ).fetchall()[0]
        conn.execute("COMMIT")
        if half_files:
            violations.append(["half a file", str(half_files[:3])])
        if half_closes:
            violations.append(["half a close", str(half_closes[:3])])
        if counts != again:
            violations.append(["snapshot moved", str((counts, again))])
        seen_files, seen_invoices = max(seen_files, counts[0]), max(seen_invoices, counts[2])
        rounds += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
        conn = None
    longest = max(longest, time.monotonic() - started)
print(json.dumps({"rounds": rounds, "errors": errors, "violations": violations,
                  "files": seen_files, "invoices": seen_invoices, "longest": longest}))
"""


def upload(s3, bucket: str, prefix: str, files: int, seed: int) -> dict[str, int]:
    """Stripe CSVs for the example catalog's daily customers, yesterday and today (some rows bad)."""
    arrival = datetime.now(UTC)
    sizes = {}
    for i in range(files):
        frame = generate_usage_frame(
            layout="stripe",
            rows=ROWS,
            arrival=arrival,
            seed=seed + i,
            key_hint=f"{prefix}{i}",
            error_rate=0.01,
            duplicate_rate=0.01,
            time_span=timedelta(hours=30),
        )
        key = f"incoming/{prefix}{i}.csv"
        put(s3, bucket, key, serialize(frame, "stripe", "csv"))
        sizes[key] = ROWS
    return sizes


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "usage_pipeline.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_analyst(settings: Settings, stop: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(ANALYST), settings.lake, settings.lake_data, str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_an_analyst_reading_in_a_loop_never_fails_blocks_or_sees_half_a_file_or_close(
    settings: Settings, s3, bucket, tmp_path: Path
):
    sizes = upload(s3, bucket, "first-", 3, seed=0)
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(settings, home)
    code, _, err = finish(cli(env, tmp_path, "ingest"))
    assert code == 0, err[-3000:]
    today = datetime.now(UTC).date().isoformat()

    stop = tmp_path / "stop"
    analyst = start_analyst(settings, stop)
    try:
        time.sleep(1.0)  # the analyst is attached and looping before the writers start
        sizes |= upload(s3, bucket, "second-", 3, seed=100)
        # An ingest and a close at the same time, while the analyst reads.
        ingesting, closing = cli(env, tmp_path, "ingest"), cli(env, tmp_path, "close", "--date", today)
        ingested, closed = finish(ingesting), finish(closing)
        # A second close of the same day (a re-close, regenerating) while the analyst still reads.
        reclosed = finish(cli(env, tmp_path, "close", "--date", today))
    finally:
        stop.touch()
        code, out, err = finish(analyst, timeout=120)
    assert ingested[0] == 0, ingested[2][-3000:]
    assert closed[0] == 0, closed[2][-3000:]
    assert reclosed[0] == 0, reclosed[2][-3000:]
    assert code == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["errors"] == [], report
    assert report["violations"] == [], report
    assert report["rounds"] >= 20, report
    assert report["files"] == len(sizes) and report["invoices"] > 0, report
    assert_each_file_exactly_once(settings, sizes)
    invoices = lake_rows(settings, "SELECT count(*) FROM pending_invoices")[0][0]
    assert invoices == report["invoices"]


def test_two_ingest_processes_given_the_same_files_ingest_each_version_once(
    settings: Settings, s3, bucket, tmp_path: Path
):
    sizes = upload(s3, bucket, "same-", 6, seed=7)
    # Two Dagster instances: no shared cursor, no CLI lock; only the lake stands between them.
    envs = []
    for name in ("one", "two"):
        home = tmp_path / name
        home.mkdir()
        envs.append(cli_env(settings, home))
    first, second = cli(envs[0], tmp_path, "ingest"), cli(envs[1], tmp_path, "ingest")
    results = [finish(first), finish(second)]
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert_each_file_exactly_once(settings, sizes)
    # Each process reports the versions its own runs wrote: together, every file exactly once.
    keys = [
        line.split()[-1] for _, out, _ in results for line in out.splitlines() if line.startswith("succeeded")
    ]
    assert sorted(keys) == sorted(sizes), [out for _, out, _ in results]
    attempts = lake_rows(settings, "SELECT count(*) FROM file_attempts")[0][0]
    assert attempts == 0
