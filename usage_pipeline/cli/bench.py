"""`usage-pipeline bench`: ingest throughput against the floor on the same bytes, and cost vs history.

One run measures, on two kinds of storage, the same S3 files (served by a local S3 server in its own
process):

* the lake: DuckLake, SQLite catalog + Parquet data files, opened by `lake.connect` as the product does;
* a native DuckDB file (`duckdb.connect(path)` + `ensure_schema`), for comparison: the product's code
  runs on it unchanged (`transact` falls back to a plain BEGIN/COMMIT there).

For each storage:

* floor: S3 GET + polars `read_csv` + a plain INSERT into `usage_events` + COMMIT, one transaction per
  file, into a fresh store of that kind: no validation, no deduplication, no ledger;
* ingest: `ingest_files` (the product path: parse, validate, dedup, rejects, ledger) into another fresh
  store of that kind. Target: ingest time <= 1.3x floor time;
* history: the same new files ingested into an empty store, into one holding `--history` events spread
  over the year before the batch (target <= 1.2x empty), and into one holding `--same-day-history` events
  on the batch's own day: every one of them falls inside the Stripe +-24 h deduplication window, the
  honest worst case for the dedup scan (same target, reported beside).

Stored history is generated inside DuckDB (`range()`), in time order, in transactions of 10M events.
`--small` is a quick check of the whole run; `--skip-native` measures the lake alone.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import click
import duckdb
import polars as pl

from usage_pipeline.cli.generate import COLUMNS, generate_usage_frame
from usage_pipeline.cli.local_s3 import LOCAL_CREDENTIALS, local_s3
from usage_pipeline.core.ingest.model import FileVersion, ValidationLimits
from usage_pipeline.core.ingest.runner import ingest_files
from usage_pipeline.core.ingest.s3 import list_page, read_version
from usage_pipeline.core.storage.lake import Lake, connect, registered, transaction
from usage_pipeline.core.storage.schema import ensure_schema

BUCKET = "usage-bench"
LIMITS = ValidationLimits()
INGEST_TARGET = 1.3  # ingest time / floor time
HISTORY_TARGET = 1.2  # 1M new events with history stored / into an empty store
HISTORY_CHUNK = 10_000_000  # stored events per generating transaction
YEAR = timedelta(days=365)
DAY = timedelta(days=1)
# The customers of the batch and of the stored history alike.
CUSTOMERS = tuple(f"cus_{k:04d}" for k in range(5000))


@dataclass(frozen=True)
class BenchConfig:
    files: int = 5
    events_per_file: int = 1_000_000
    history: int = 50_000_000
    same_day_history: int = 10_000_000
    history_files: int = 3
    storages: tuple[str, ...] = ("lake", "native")

    @classmethod
    def small(cls) -> BenchConfig:
        """A quick check of the whole run (about half a minute)."""
        return cls(
            files=2, events_per_file=50_000, history=1_000_000, same_day_history=200_000, history_files=1
        )


# --- the two kinds of storage ------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """One store of a kind under `root`: a DuckLake lake (SQLite catalog + Parquet) or a DuckDB file."""

    kind: str  # "lake" | "native"
    root: Path

    @property
    def lake(self) -> Lake:
        return Lake(catalog=f"sqlite:{self.root / 'catalog.sqlite'}", data_path=f"{self.root / 'data'}/")

    def fresh(self) -> Store:
        """An empty store with the pipeline's tables (creating them is not part of any measurement)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        with self.open():
            pass
        return self

    @contextmanager
    def open(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.kind == "lake":
            with connect(self.lake) as conn:
                yield conn
            return
        conn = duckdb.connect(str(self.root / "usage.duckdb"))
        try:
            ensure_schema(conn)
            yield conn
        finally:
            conn.close()

    def settle(self) -> None:
        """Write everything down before the next measurement, so it does not pay for the OS writing back
        a just-written file (or for DuckDB checkpointing a big WAL). A lake has nothing to checkpoint
        (CHECKPOINT on DuckLake would run its maintenance and rewrite the layout)."""
        if self.kind == "native":
            with self.open() as conn:
                conn.execute("CHECKPOINT")
        os.sync()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


STORAGE_LABELS = {"lake": "lake (SQLite catalog + Parquet)", "native": "native DuckDB file"}


# --- what is measured --------------------------------------------------------------------------------


@dataclass
class Timing:
    label: str
    events: int
    seconds: float  # wall clock
    cpu: float = 0.0  # CPU seconds of this process, all threads: steadier on a shared machine

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"  {self.label:<52} {self.events:>11,} events {self.seconds:>7.2f} s "
            f"{self.rate:>10,.0f} events/s  (CPU {self.cpu:.2f} s)"
        )


class _Clock:
    """Wall-clock and CPU seconds since it was made."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def timing(self, label: str, events: int) -> Timing:
        return Timing(label, events, time.perf_counter() - self.wall, time.process_time() - self.cpu)


# The floor's plain insert: the CSV's text columns into usage_events' columns, with only what the
# table's NOT NULL columns and types need (a bad timestamp or missing id is left out, not explained).
FLOOR_INSERT = """
    INSERT INTO usage_events
    SELECT identifier, 'stripe', event_name, payload_stripe_customer_id, NULL, ts,
           json_object('value', payload_value, 'region', payload_region, 'model', payload_model,
                       'request_id', payload_request_id),
           $file, $etag, source_row, $now
    FROM (SELECT *, make_timestamp(TRY_CAST("timestamp" AS BIGINT) * 1000000) AS ts FROM raw)
    WHERE ts IS NOT NULL AND identifier IS NOT NULL
"""


def _floor(client, files: list[FileVersion], store: Store) -> Timing:
    """S3 GET + polars read_csv + a plain INSERT into usage_events and COMMIT, one file at a time."""
    events = 0
    now = datetime.now(UTC).replace(tzinfo=None)
    clock = _Clock()
    with store.open() as conn:
        for file in files:
            response = client.get_object(Bucket=BUCKET, Key=file.key)
            data = response["Body"].read()
            # As text, exactly as the ingest reads it.
            frame = pl.read_csv(data, infer_schema=False).with_row_index("source_row", offset=1)
            params = {"file": file.key, "etag": response["ETag"].strip('"'), "now": now}
            with registered(conn, {"raw": frame}), transaction(conn):
                conn.execute(FLOOR_INSERT, params).fetchall()
            events += frame.height
    return clock.timing("floor (GET + read_csv + plain INSERT)", events)


def _ingest(client, files: list[FileVersion], store: Store, label: str) -> Timing:
    """The product's ingest_files into `store`, connection opening included (as a run does)."""
    clock = _Clock()
    with store.open() as conn:
        report = ingest_files(
            files,
            fetch=lambda f: read_version(client, BUCKET, f),
            conn=conn,
            max_file_bytes=1 << 31,
            limits=LIMITS,
            run_id="bench",
        )
    timing = clock.timing(label, report.total("rows_total"))
    assert not report.unavailable, report.unavailable
    return timing


# `stored` Stripe events evenly over [$start, $end), in time order as real ingestion writes them. Their
# keys are drawn from the batch's key space (the same CUSTOMERS, `evt_<digits>` identifiers), so the
# stored events of the dedup window interleave with the batch's keys: nothing lets DuckDB skip them (a
# join filter on the batch's min/max key), and none is a duplicate of a batch event.
HISTORY_INSERT = """
    INSERT INTO usage_events
    SELECT 'evt_' || i, 'stripe', CASE WHEN i % 2 = 0 THEN 'api_call' ELSE 'llm_tokens' END,
           'cus_' || lpad(CAST(i % $customers AS VARCHAR), 4, '0'), NULL, ts,
           '{"value":"' || i % 1000 || '","region":"eu-west-1","model":"model-' || i % 7
               || '-large-2026-10"}',
           'history/' || i // 1000000 || '.csv', 'etag-' || i // 1000000, i % 1000000 + 1,
           ts + INTERVAL 10 MINUTE
    FROM (SELECT i, make_timestamp($start_us + CAST(i * $step_us AS BIGINT)) AS ts FROM history_ids)
"""


def _build_history(store: Store, stored: int, start: datetime, end: datetime) -> float:
    """`stored` events over [start, end) into `store`, HISTORY_CHUNK per transaction; returns seconds."""
    started = time.perf_counter()
    start_us = int(start.timestamp() * 1_000_000)
    step_us = (end - start) / timedelta(microseconds=1) / stored
    with store.open() as conn:
        for lo in range(0, stored, HISTORY_CHUNK):
            params = {
                "start_us": start_us,
                "step_us": step_us,
                "lo": lo,
                "hi": min(stored, lo + HISTORY_CHUNK),
                "customers": len(CUSTOMERS),
            }
            # range() is read by one thread; a TEMP table is scanned in parallel (2x faster into a lake).
            conn.execute(
                "CREATE OR REPLACE TEMP TABLE history_ids AS SELECT range AS i FROM range($lo, $hi)",
                {"lo": params.pop("lo"), "hi": params.pop("hi")},
            )
            with transaction(conn):
                conn.execute(HISTORY_INSERT, params).fetchall()
        conn.execute("DROP TABLE history_ids")
    store.settle()
    return time.perf_counter() - started


def _realistic_csv(rows: int, arrival: datetime, seed: int) -> bytes:
    """Stripe rows of a realistic width (~200 bytes, like a real meter-event export): the generator's
    columns plus payload fields a real API meter carries (region, model, request id). Events fall in the
    day before `arrival`, 0.1% bad rows and 0.1% duplicates, over 5,000 customers.

    The identifiers are random-looking (`evt_<digits>`, as real client-generated ids are), not the
    generator's `evt_<file tag>_<row>`: those cluster per file, and a batch whose ids share one prefix
    lets the dedup join skip every stored event outside it, which real data does not."""
    frame = generate_usage_frame(
        layout="stripe",
        rows=rows,
        arrival=arrival,
        seed=seed,
        key_hint=f"bench-{seed}",
        error_rate=0.001,
        duplicate_rate=0.001,
        customers=CUSTOMERS,
    ).select(COLUMNS["stripe"])
    # The same generated id gets the same new id (duplicates stay duplicates); a too-long one stays too long.
    generated = pl.col("identifier").str.extract(r"^(evt_[^_]+_\d+)")
    rest = pl.col("identifier").str.slice(generated.str.len_chars())
    random_id = pl.lit("evt_") + generated.hash(seed).cast(pl.String) + rest
    n = pl.int_range(pl.len()).hash(seed)
    frame = frame.with_columns(
        identifier=pl.when(generated.is_null()).then(pl.col("identifier")).otherwise(random_id),
        payload_region=pl.lit("eu-west-1"),
        payload_model=pl.format("model-{}-large-2026-10", n % 7),
        payload_request_id=pl.format("req_{}{}", n, n % 1_000_003),
    )
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    return buffer.getvalue()


# --- results -----------------------------------------------------------------------------------------


@dataclass
class StorageResult:
    floor: Timing | None = None
    ingest: Timing | None = None
    empty: list[Timing] = field(default_factory=list)  # one per history file, into the empty store
    year: list[Timing] = field(default_factory=list)  # … into `history` events over a year
    same_day: list[Timing] = field(default_factory=list)  # … into `same_day_history` on the batch's day

    def ingest_ratio(self, cpu: bool = False) -> float | None:
        if self.floor is None or self.ingest is None:
            return None
        return _ratio(self.ingest, self.floor, cpu)

    def history_ratio(self, with_history: list[Timing], cpu: bool = False) -> float | None:
        """The median over the files of (with history / empty) for that file: each pair was measured
        back to back, so one noisy measurement does not decide."""
        if not with_history or len(with_history) != len(self.empty):
            return None
        ratios = [_ratio(h, e, cpu) for h, e in zip(with_history, self.empty, strict=True)]
        return statistics.median(r for r in ratios if r is not None)


def _ratio(a: Timing, b: Timing, cpu: bool) -> float | None:
    num, den = (a.cpu, b.cpu) if cpu else (a.seconds, b.seconds)
    return num / den if den else None


def _verdict(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x {'met' if ratio <= target else 'NOT met'}"


def _plain(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _median(timings: list[Timing]) -> str:
    return f"{statistics.median(t.seconds for t in timings):.2f}" if timings else "-"


def _rate(timing: Timing | None) -> str:
    return f"{timing.rate:,.0f}" if timing is not None else "-"


def _count(n: int) -> str:
    """1M, 50M, 200k, 999."""
    if n >= 1_000_000:
        return f"{n / 1e6:g}M"
    return f"{n / 1e3:g}k" if n >= 1000 else str(n)


def summary_table(results: dict[str, StorageResult], config: BenchConfig) -> list[str]:
    kinds = list(results)
    per_file = _count(config.events_per_file)
    cpu_note = "    (same, CPU seconds)"
    rows: list[tuple[str, Callable[[StorageResult], str], str]] = [
        ("floor, events/s", lambda r: _rate(r.floor), ""),
        ("ingest, events/s", lambda r: _rate(r.ingest), ""),
        (
            "ingest / floor (time)",
            lambda r: _verdict(r.ingest_ratio(), INGEST_TARGET),
            f"<= {INGEST_TARGET}x",
        ),
        (cpu_note, lambda r: _plain(r.ingest_ratio(cpu=True)), ""),
    ]
    if config.history or config.same_day_history:
        rows.append((f"{per_file} into empty, s", lambda r: _median(r.empty), ""))
    if config.history:
        rows += [
            (f"{per_file} into {_count(config.history)} stored (a year), s", lambda r: _median(r.year), ""),
            (
                "  with history / empty",
                lambda r: _verdict(r.history_ratio(r.year), HISTORY_TARGET),
                f"<= {HISTORY_TARGET}x",
            ),
            (cpu_note, lambda r: _plain(r.history_ratio(r.year, cpu=True)), ""),
        ]
    if config.same_day_history:
        rows += [
            (
                f"{per_file} into {_count(config.same_day_history)} stored (same day), s",
                lambda r: _median(r.same_day),
                "",
            ),
            (
                "  same-day history / empty",
                lambda r: _verdict(r.history_ratio(r.same_day), HISTORY_TARGET),
                f"<= {HISTORY_TARGET}x",
            ),
            (cpu_note, lambda r: _plain(r.history_ratio(r.same_day, cpu=True)), ""),
        ]
    label_width = max(len(label) for label, _, _ in rows) + 2
    widths = [max(len(STORAGE_LABELS[k]), 16) + 2 for k in kinds]
    head = f"{'':<{label_width}}" + "".join(
        f"{STORAGE_LABELS[k]:>{w}}" for k, w in zip(kinds, widths, strict=True)
    )
    lines = [head + f"{'target':>10}", "-" * (len(head) + 10)]
    for label, cell, target in rows:
        cells = "".join(f"{cell(results[k]):>{w}}" for k, w in zip(kinds, widths, strict=True))
        lines.append(f"{label:<{label_width}}{cells}{target:>10}")
    return lines


# --- the run -----------------------------------------------------------------------------------------


def run_bench(*, config: BenchConfig, workdir: Path, keep: bool = False) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    # moto in its own process, so serving bytes does not compete with the measured code's GIL.
    with local_s3(bucket=BUCKET, own_process=True) as endpoint:
        try:
            _measure(endpoint, config=config, workdir=workdir, keep=keep)
        finally:
            if not keep:
                for kind in config.storages:
                    shutil.rmtree(workdir / kind, ignore_errors=True)
                if not any(workdir.iterdir()):
                    workdir.rmdir()


def _measure(endpoint: str, *, config: BenchConfig, workdir: Path, keep: bool) -> None:
    def done_with(folder: Path) -> None:
        """Stores are dropped as soon as measured (a 50M-event history is a few GB), unless kept."""
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)

    run_started = time.perf_counter()
    for key, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    arrival = datetime.now(UTC).replace(microsecond=0)
    n_upload = max(config.files, config.history_files if config.history or config.same_day_history else 0)
    click.echo(
        f"generating {n_upload} Stripe CSV files x {config.events_per_file:,} events "
        f"and uploading them to {endpoint} …"
    )
    for i in range(n_upload):
        body = _realistic_csv(config.events_per_file, arrival, seed=i)
        client.put_object(Bucket=BUCKET, Key=f"incoming/bench-{i:03d}.csv", Body=body)
    listed, _ = list_page(client, BUCKET, "incoming/", None)
    listed = sorted(listed, key=lambda f: f.key)
    files, history_files = listed[: config.files], listed[: config.history_files]
    size = sum(f.size for f in files)
    click.echo(f"{len(files)} files, {size / 1e6:,.0f} MB, {config.files * config.events_per_file:,} events")

    results: dict[str, StorageResult] = {}
    for kind in config.storages:
        result = results[kind] = StorageResult()
        click.echo(f"\n{STORAGE_LABELS[kind]}:")
        base = workdir / kind
        result.floor = _floor(client, files, Store(kind, base / "floor").fresh())
        click.echo(result.floor.line())
        result.ingest = _ingest(
            client, files, Store(kind, base / "ingest").fresh(), "ingest (validate + dedup + ledger)"
        )
        click.echo(result.ingest.line())
        done_with(base / "floor")
        done_with(base / "ingest")
        if config.history or config.same_day_history:
            _history(client, history_files, config, arrival, Store(kind, base), result)
        done_with(base)

    each_mb = size / max(len(files), 1) / 1e6
    click.echo(
        f"\n{config.files} files x {config.events_per_file:,} Stripe CSV events (~{each_mb:.0f} MB each); "
        f"history figures: median of {len(history_files)} file(s), each ingested into every store"
    )
    for line in summary_table(results, config):
        click.echo(line)
    click.echo(f"\nbench run: {time.perf_counter() - run_started:.0f} s")


def _history(
    client,
    files: list[FileVersion],
    config: BenchConfig,
    arrival: datetime,
    base: Store,
    result: StorageResult,
) -> None:
    """The same new files into an empty store, one with a year of history, one with a busy same day;
    alternating per file, each file new data for all of them (its own identifiers)."""
    empty = Store(base.kind, base.root / "empty").fresh()
    stores: list[tuple[Store, list[Timing], str]] = []
    if config.history:
        year = Store(base.kind, base.root / "year").fresh()
        click.echo(f"  building {config.history:,} stored events over the year before the batch …")
        # Ends where the batch's events start: its +-24 h window reaches a day into the history.
        seconds = _build_history(year, config.history, arrival - DAY - YEAR, arrival - DAY)
        click.echo(f"    built in {seconds:.1f} s ({year.size_bytes() / 1e6:,.0f} MB)")
        stores.append((year, result.year, f"{config.history:,} stored (a year)"))
    if config.same_day_history:
        day = Store(base.kind, base.root / "same-day").fresh()
        click.echo(f"  building {config.same_day_history:,} stored events on the batch's day …")
        # The batch's own day: every stored event is inside its deduplication window.
        seconds = _build_history(day, config.same_day_history, arrival - DAY, arrival)
        click.echo(f"    built in {seconds:.1f} s ({day.size_bytes() / 1e6:,.0f} MB)")
        stores.append((day, result.same_day, f"{config.same_day_history:,} stored (same day)"))
    empty.settle()
    for file in files:
        t_empty = _ingest(client, [file], empty, f"{file.key}: empty store")
        result.empty.append(t_empty)
        click.echo(t_empty.line())
        for store, timings, what in stores:
            timing = _ingest(client, [file], store, f"{file.key}: {what}")
            timings.append(timing)
            click.echo(timing.line())


def with_overrides(config: BenchConfig, **overrides: object) -> BenchConfig:
    """`config` with the options the user gave (None: not given)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
