"""Real `usage-pipeline ingest` processes: killed with SIGKILL mid-run, and two running at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from usage_pipeline.cli.generate import generate_usage_frame, serialize
from usage_pipeline.core.storage.lake import read_only
from usage_pipeline.settings import Settings, lake_of
from usage_pipeline_tests.conftest import put

pytestmark = pytest.mark.slow

FILES = 6
ROWS = 60_000


def upload_files(s3, bucket: str) -> dict[str, int]:
    """Stripe CSVs with bad rows and duplicates; returns key -> rows in the file."""
    arrival = datetime.now(UTC)
    sizes = {}
    for i in range(FILES):
        frame = generate_usage_frame(
            layout="stripe",
            rows=ROWS,
            arrival=arrival,
            seed=i,
            key_hint=f"crash-{i}",
            error_rate=0.01,
            duplicate_rate=0.01,
        )
        key = f"incoming/crash-{i}.csv"
        put(s3, bucket, key, serialize(frame, "stripe", "csv"))
        sizes[key] = ROWS
    return sizes


def cli_env(settings: Settings, home: Path) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        DAGSTER_HOME=str(home),
        USAGE_BUCKET=settings.bucket,
        USAGE_PREFIX=settings.prefix,
        USAGE_LAKE=settings.lake,
        USAGE_LAKE_DATA=settings.lake_data,
        AWS_ENDPOINT_URL_S3=str(settings.s3_endpoint_url),
        USAGE_RUN_MAX_FILES="2",  # three runs of two files: the kill lands between or inside runs
    )
    return env


def ingest(env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "usage_pipeline.cli", "ingest"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_each_file_exactly_once(settings: Settings, sizes: dict[str, int]) -> None:
    with read_only(lake_of(settings)) as conn:
        ledger = conn.execute(
            "SELECT file_key, count(*), sum(rows_total), sum(rows_accepted), sum(rows_rejected) "
            "FROM ingested_files GROUP BY file_key ORDER BY file_key"
        ).fetchall()
        per_file_events = dict(
            conn.execute("SELECT source_file, count(*) FROM usage_events GROUP BY source_file").fetchall()
        )
        per_file_rejects = dict(
            conn.execute("SELECT source_file, count(*) FROM rejected_events GROUP BY source_file").fetchall()
        )
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT source_file, source_row FROM usage_events "
            "GROUP BY ALL HAVING count(*) > 1)"
        ).fetchall()[0][0]
    assert [row[0] for row in ledger] == sorted(sizes)
    for key, versions, total, accepted, rejected in ledger:
        assert versions == 1, f"{key} ingested {versions} times"
        assert total == sizes[key]
        assert per_file_events.get(key, 0) == accepted  # nothing lost, nothing twice
        assert per_file_rejects.get(key, 0) == rejected
    assert doubled == 0


def test_sigkill_mid_ingest_then_rerun_loses_nothing_and_doubles_nothing(settings, s3, bucket, tmp_path):
    sizes = upload_files(s3, bucket)
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(settings, home)
    victim = ingest(env, tmp_path)
    # Kill once the first run has committed something and a later one is under way.
    os.environ["DAGSTER_HOME"] = str(home)
    deadline = time.monotonic() + 120
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            while time.monotonic() < deadline and victim.poll() is None:
                runs = instance.get_runs()
                if any(r.status == dg.DagsterRunStatus.SUCCESS for r in runs) and len(runs) >= 2:
                    break
                time.sleep(0.05)
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    assert victim.poll() is None, "the ingest finished before it could be killed"
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)

    rerun = ingest(env, tmp_path)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert_each_file_exactly_once(settings, sizes)
    again = ingest(env, tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "nothing new" in out


def test_two_concurrent_ingest_processes_ingest_each_file_once(settings, s3, bucket, tmp_path):
    sizes = upload_files(s3, bucket)
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(settings, home)
    first, second = ingest(env, tmp_path), ingest(env, tmp_path)
    results = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0, results[0][1][-3000:]
    assert second.returncode == 0, results[1][1][-3000:]
    printed = [
        line.split()[-1] for out, _ in results for line in out.splitlines() if line.startswith("succeeded")
    ]
    assert sorted(printed) == sorted(sizes)  # between them, each file reported processed once
    assert_each_file_exactly_once(settings, sizes)
