"""The many-machines configuration against the real parts: a DuckLake catalog in PostgreSQL (a throwaway
server on loopback) with its data on S3 (moto's server), workers as real `usage-pipeline` processes on
separate Dagster instances, one of them killed mid-commit; the Dagster instance itself on Postgres; and
the failures of those services as one line each."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from usage_pipeline.cli.generate import generate_usage_frame, serialize
from usage_pipeline.settings import Settings
from usage_pipeline_tests.cli.test_cli_processes import assert_each_file_exactly_once, cli_env
from usage_pipeline_tests.cli.test_crash_recovery import SITECUSTOMIZE
from usage_pipeline_tests.conftest import lake_rows, put
from usage_pipeline_tests.postgres import PostgresServer

pytestmark = pytest.mark.slow

ROWS = 20_000
PROJECT = Path(__file__).resolve().parents[2]


def upload(s3, bucket: str, groups: str = "abc", per_group: int = 3) -> dict[str, int]:
    arrival = datetime.now(UTC)
    sizes = {}
    for g in groups:
        for i in range(per_group):
            frame = generate_usage_frame(
                layout="stripe",
                rows=ROWS,
                arrival=arrival,
                seed=ord(g) * 10 + i,
                key_hint=f"{g}{i}",
                error_rate=0.01,
                duplicate_rate=0.01,
            )
            key = f"incoming/{g}-{i}.csv"
            put(s3, bucket, key, serialize(frame, "stripe", "csv"))
            sizes[key] = ROWS
    return sizes


def worker(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "usage_pipeline.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def home_env(settings: Settings, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    home = tmp_path / name
    home.mkdir()
    return {**cli_env(settings, home), **extra}


def test_workers_on_a_postgres_lake_on_s3_ingest_each_version_once_despite_a_kill(
    pg_settings: Settings, s3, bucket, tmp_path: Path
):
    sizes = upload(s3, bucket)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    # Four workers, each its own Dagster instance (no shared cursor or lock), given overlapping batches:
    # all nine files in runs of two; all nine one file per run; only the b-files; and a victim that takes
    # all nine and is SIGKILLed a moment after its second file's COMMIT is sent.
    envs = [
        home_env(pg_settings, tmp_path, "w1"),
        home_env(pg_settings, tmp_path, "w2", USAGE_RUN_MAX_FILES="1"),
        home_env(pg_settings, tmp_path, "w3", USAGE_PREFIX="incoming/b"),
        home_env(
            pg_settings,
            tmp_path,
            "victim",
            USAGE_TEST_GROUP_MAX_ROWS="1",  # files written one by one, each its own COMMIT
            PYTHONPATH=str(hooks),
            USAGE_TEST_KILL_AT="usage_pipeline.core.ingest.store:transact:commit:2",
        ),
    ]
    processes = [worker(env, tmp_path, "ingest") for env in envs]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in processes]  # type: ignore[union-attr]
    victim = results.pop()
    assert victim[0] == -9, f"the victim was not killed: {victim[2][-2000:]}"
    for code, _, err in results:
        assert code == 0, err[-3000:]
    # Whatever the victim left (nothing half-written; maybe a version it had claimed) the next run finishes.
    again = worker(envs[0], tmp_path, "ingest")
    assert again.wait(timeout=600) == 0, again.stderr.read()  # type: ignore[union-attr]
    assert_each_file_exactly_once(pg_settings, sizes)
    # The Parquet files are on S3, under the lake's data path.
    data_bucket, prefix = pg_settings.lake_data.removeprefix("s3://").split("/", 1)
    listed = s3.list_objects_v2(Bucket=data_bucket, Prefix=prefix)
    assert any(o["Key"].endswith(".parquet") for o in listed.get("Contents", []))


def test_the_dagster_instance_on_postgres_end_to_end(
    pg_settings: Settings, postgres: PostgresServer, s3, bucket, tmp_path: Path, monkeypatch
):
    sizes = upload(s3, bucket, groups="a", per_group=2)
    # The project's own example instance config, as a deployment would use it.
    env = home_env(
        pg_settings,
        tmp_path,
        "home",
        DAGSTER_PG_HOST=postgres.host,
        DAGSTER_PG_PORT=str(postgres.port),
        DAGSTER_PG_USER=postgres.user,
        DAGSTER_PG_PASSWORD=postgres.password,
        DAGSTER_PG_DB=postgres.create_database("dagster"),
    )
    shutil.copyfile(PROJECT / "dagster.postgres.yaml", Path(env["DAGSTER_HOME"]) / "dagster.yaml")
    ingested = worker(env, tmp_path, "ingest")
    assert ingested.wait(timeout=600) == 0, ingested.stderr.read()  # type: ignore[union-attr]
    today = datetime.now(UTC).date().isoformat()
    closed = worker(env, tmp_path, "close", "--date", today)
    assert closed.wait(timeout=600) == 0, closed.stderr.read()  # type: ignore[union-attr]
    assert_each_file_exactly_once(pg_settings, sizes)
    invoices = lake_rows(pg_settings, "SELECT count(*) FROM pending_invoices")[0][0]
    revisions = lake_rows(pg_settings, "SELECT count(*) FROM invoice_revisions")[0][0]
    assert invoices > 0 and revisions == invoices
    # The runs, their check results and the close partition are in the Postgres instance.
    for var in (
        "DAGSTER_PG_HOST",
        "DAGSTER_PG_PORT",
        "DAGSTER_PG_USER",
        "DAGSTER_PG_PASSWORD",
        "DAGSTER_PG_DB",
    ):
        monkeypatch.setenv(var, env[var])
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs()
        assert {r.job_name for r in runs} == {"ingest_files", "period_close"}
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("ingested_files"), "row_counts_balance")]
        )
        assert checks, "the ingest's check results are stored in the Postgres instance"


def one_line(process: subprocess.Popen) -> str:
    code = process.wait(timeout=300)
    err = process.stderr.read()  # type: ignore[union-attr]
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_postgres_and_s3_failures_are_one_line_and_write_nothing(
    pg_settings: Settings, postgres: PostgresServer, s3, bucket, tmp_path: Path
):
    wrong = pg_settings.lake.replace(postgres.password, "not-the-password")
    env = home_env(pg_settings, tmp_path, "h1", USAGE_LAKE=wrong)
    line = one_line(worker(env, tmp_path, "ingest"))
    assert line.startswith("Postgres (lake catalog): the password was refused"), line
    assert "not-the-password" not in line and "check USAGE_LAKE=" in line

    down = pg_settings.lake.replace(f"port={postgres.port}", "port=1")
    env = home_env(pg_settings, tmp_path, "h2", USAGE_LAKE=down)
    line = one_line(worker(env, tmp_path, "close", "--date", datetime.now(UTC).date().isoformat()))
    assert line.startswith("Postgres (lake catalog): the server is not reachable"), line

    env = home_env(pg_settings, tmp_path, "h3", USAGE_LAKE_DATA="s3://no-such-lake-bucket/lake/")
    line = one_line(worker(env, tmp_path, "ingest"))
    assert line.startswith("S3 (lake data): bucket 'no-such-lake-bucket' does not exist"), line
    # Nothing was written anywhere: no Dagster run was even created.
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_runs() == []
