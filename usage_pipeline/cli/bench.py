"""`usage-pipeline bench`: ingest throughput against the floor on the same bytes, and cost vs history."""

from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import click
import polars as pl

from usage_pipeline.cli.generate import COLUMNS, generate_usage_frame
from usage_pipeline.cli.local_s3 import LOCAL_CREDENTIALS, local_s3
from usage_pipeline.core.ingest.model import FileVersion, ValidationLimits
from usage_pipeline.core.ingest.runner import ingest_files
from usage_pipeline.core.ingest.s3 import list_page, read_version
from usage_pipeline.core.storage.lake import Lake, connect, registered, transaction

BUCKET = "usage-bench"
LIMITS = ValidationLimits()


@dataclass
class Timing:
    label: str
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.label:<44} {self.events:>12,} events {self.seconds:>8.2f} s {self.rate:>12,.0f} events/s"
        )


def _lake(path: Path) -> Lake:
    return Lake(catalog=f"sqlite:{path}", data_path=f"{path}.files/")


def _fresh(db: Path) -> Path:
    """`db`, with the database file and its WAL of an earlier benchmark removed."""
    for suffix in ("", ".wal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


def _floor(client, files: list[FileVersion], db: Path) -> Timing:
    """S3 GET + polars.read_csv + a plain DuckDB insert and commit: no validation, no dedup."""
    events = 0
    started = time.perf_counter()
    with connect(_lake(db)) as conn:
        for file in files:
            data = client.get_object(Bucket=BUCKET, Key=file.key)["Body"].read()
            frame = pl.read_csv(data, infer_schema=False)  # as text, exactly as the ingest reads it
            with registered(conn, {"raw": frame.to_arrow()}):
                if file is files[0]:
                    conn.execute("CREATE TABLE raw_events AS SELECT * FROM raw LIMIT 0")
                with transaction(conn):
                    conn.execute("INSERT INTO raw_events SELECT * FROM raw").fetchall()
            events += frame.height
    return Timing("floor (GET + read_csv + plain insert)", events, time.perf_counter() - started)


def _ingest(client, files: list[FileVersion], db: Path, label: str) -> Timing:
    started = time.perf_counter()
    with connect(_lake(db)) as conn:
        report = ingest_files(
            files,
            fetch=lambda f: read_version(client, BUCKET, f),
            conn=conn,
            max_file_bytes=1 << 31,
            limits=LIMITS,
            run_id="bench",
        )
    seconds = time.perf_counter() - started
    return Timing(label, report.total("rows_total"), seconds)


def _settle(path: Path) -> None:
    """Checkpoint and flush to disk, so the next measurement does not pay for the OS writing back a
    just-written file (what made a plain insert look 2.5x slower at 50M rows)."""
    with connect(_lake(path)) as conn:
        conn.execute("CHECKPOINT")
    os.sync()


def _build_history(db: Path, stored: int, before: datetime) -> None:
    """`stored` Stripe events over the year before `before`, inserted in time order as real ingestion does."""
    span = 365 * 24 * 3600 * 1000
    with connect(_lake(db)) as conn:
        conn.execute(
            f"""INSERT INTO usage_events
                SELECT 'h' || i, 'stripe', 'api_call', 'cus_' || (i % 5000), NULL,
                       make_timestamp(CAST(({before.timestamp() * 1000:.0f} - {span}
                                           + i * {span} // {stored}) * 1000 AS BIGINT)),
                       '{{"value":"1"}}', 'history/' || (i // 1000000) || '.csv', 'etag', i % 1000000,
                       TIMESTAMP '2026-01-01'
                FROM range({stored}) AS t(i)"""
        )
    _settle(db)


def _realistic_csv(rows: int, arrival: datetime, seed: int) -> bytes:
    """Stripe rows of a realistic width (~170 bytes, like a real meter-event export): the generator's
    columns plus payload fields a real API meter carries (region, model, request id)."""
    frame = generate_usage_frame(
        layout="stripe",
        rows=rows,
        arrival=arrival,
        seed=seed,
        key_hint=f"bench-{seed}",
        error_rate=0.001,
        duplicate_rate=0.001,
    ).select(COLUMNS["stripe"])
    n = pl.int_range(pl.len()).hash(seed)
    frame = frame.with_columns(
        payload_region=pl.lit("eu-west-1"),
        payload_model=pl.format("model-{}-large-2026-10", n % 7),
        payload_request_id=pl.format("req_{}{}", n, n % 1_000_003),
    )
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    return buffer.getvalue()


def _history_growth(client, files: list[FileVersion], history: int, arrival: datetime, workdir: Path) -> None:
    """The same new files ingested into an empty table and into one holding `history` events, alternating,
    each file new data for both (its own identifiers), so the ratio is robust to one noisy measurement."""
    empty_db, full_db = _fresh(workdir / "hist0.duckdb"), _fresh(workdir / "hist.duckdb")
    click.echo(f"building a history of {history:,} stored events …")
    started = time.perf_counter()
    _build_history(full_db, history, arrival - timedelta(days=2))
    click.echo(f"  built in {time.perf_counter() - started:.1f} s")
    _settle(empty_db)
    ratios = []
    for file in files:
        t_empty = _ingest(client, [file], empty_db, f"{file.key}: empty table")
        t_full = _ingest(client, [file], full_db, f"{file.key}: {history:,} stored")
        ratios.append(t_full.seconds / t_empty.seconds)
        click.echo(t_empty.line())
        click.echo(t_full.line())
    ratios.sort()
    click.echo(
        f"with history / empty: {', '.join(f'{r:.2f}x' for r in ratios)}; "
        f"median {ratios[len(ratios) // 2]:.2f}x (target <= 1.2x)"
    )


def run_bench(*, n_files: int, rows: int, history: int, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    # moto in its own process, so serving bytes does not compete with the measured code's GIL.
    with local_s3(bucket=BUCKET, own_process=True) as endpoint:
        try:
            _measure(endpoint, n_files=n_files, rows=rows, history=history, workdir=workdir)
        finally:
            if workdir.name == "out":
                shutil.rmtree(workdir, ignore_errors=True)


def _measure(endpoint: str, *, n_files: int, rows: int, history: int, workdir: Path) -> None:
    for key, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    arrival = datetime.now(UTC)
    click.echo(f"generating {n_files} Stripe CSV files x {rows:,} events and uploading to {endpoint} …")
    for i in range(n_files):
        body = _realistic_csv(rows, arrival, seed=i)
        client.put_object(Bucket=BUCKET, Key=f"incoming/bench-{i:03d}.csv", Body=body)
    files, _ = list_page(client, BUCKET, "incoming/", None)
    size = sum(f.size for f in files)
    click.echo(f"{len(files)} files, {size / 1e6:,.0f} MB\n")

    floor = _floor(client, files, _fresh(workdir / "floor.duckdb"))
    ingest = _ingest(client, files, _fresh(workdir / "ingest.duckdb"), "ingest (validate + dedup + ledger)")
    click.echo(floor.line())
    click.echo(ingest.line())
    click.echo(f"ingest time / floor time: {ingest.seconds / floor.seconds:.2f}x (target <= 1.3x)\n")

    if history:
        _history_growth(client, files[:3], history, arrival, workdir)
