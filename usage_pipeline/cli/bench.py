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
`--small` is a quick check of this part; `--skip-native` measures the lake alone; `--skip-storage` and
`--skip-history` leave this part, or its history, out.

Then, end to end, per workload of S3 files (10 x 1M Stripe CSV, 100 x 100k CSV, 100 x 100k JSON Lines,
100 x 10k CSV, 1,000 x 100 CSV, and one ~1 GB file each as CSV, .csv.gz and JSON Lines, whose `ingest`
process must peak under 2 GB; JSON Lines against CSV of the same rows, time per event, target <= 1.5x;
`--workloads` picks some, `--scale` resizes them, `--quick` makes
everything ~20x smaller), each under its own prefix of the same local S3 server, into the lake:

* the ingest step (`ingest_files` in this process) into a fresh lake, and for the CSV cases of 10k / 100k /
  1M rows per file the floor too (target: step time <= 1.3x the floor's);
* the product end to end: a real `usage-pipeline ingest` process on a fresh Dagster instance (DAGSTER_HOME,
  USAGE_LAKE and USAGE_LAKE_DATA in a new folder; USAGE_BUCKET / USAGE_PREFIX at the workload's files):
  one sensor evaluation plus the Dagster runs it requests, timed from process start to exit, with its CPU
  seconds and peak RSS (from wait4). Target: >= 0.9x the step's events/s; for 1,000 x 100 rows, >= 100
  files/s. Where its time goes is read back from the run's Dagster instance (run and step events, the
  `seconds` metadata of ingest_files), and one more `ingest` with nothing new gives the fixed cost of a
  process; `--skip-e2e` leaves this part out;
* with `--peers`, on the same files: dlt's filesystem source into a DuckDB file (in its own venv under the
  work folder, installed once: bench/peer_dlt.py) and a hand-written DuckDB script (bench/peer_duckdb.py:
  GET, read_csv, anti-join on the Stripe dedup key, INSERT, one transaction per file, into a native DuckDB
  file), each a process timed like the product's. Targets on 10 x 1M and 100 x 100k CSV: the product end
  to end >= 1.5x faster than dlt, and its time within 1.3x of the hand-written script's.

The summary is printed as markdown tables (to paste into the README), each row with its target and
met / NOT met.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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
from usage_pipeline.core.ingest.runner import ingest_files, prefetched
from usage_pipeline.core.ingest.s3 import list_page, read_version
from usage_pipeline.core.storage.lake import Lake, connect, read_only, registered, transaction
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
        """A quick check of this part (about half a minute)."""
        return cls(
            files=2, events_per_file=50_000, history=1_000_000, same_day_history=200_000, history_files=1
        )

    @classmethod
    def quick(cls) -> BenchConfig:
        """Every size ~20x smaller (`--quick`)."""
        return cls(events_per_file=50_000, history=2_500_000, same_day_history=500_000)


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
    """S3 GET + polars read_csv + a plain INSERT into usage_events and COMMIT, one file at a time, the
    next files fetched and read while one is written, by the ingest's own prefetching."""
    events = 0
    now = datetime.now(UTC).replace(tzinfo=None)
    clock = _Clock()

    def load(file: FileVersion) -> tuple[pl.DataFrame, str]:
        response = client.get_object(Bucket=BUCKET, Key=file.key)
        # As text, exactly as the ingest reads it.
        frame = pl.read_csv(response["Body"].read(), infer_schema=False)
        return frame.with_row_index("source_row", offset=1), response["ETag"].strip('"')

    with store.open() as conn:
        for file, (frame, etag) in zip(files, prefetched(files, load), strict=True):
            params = {"file": file.key, "etag": etag, "now": now}
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


def _realistic_frame(rows: int, arrival: datetime, seed: int) -> pl.DataFrame:
    """Stripe rows of a realistic width (~120 bytes as CSV, like a real meter-event export): the
    generator's columns plus payload fields a real API meter carries (region, model, request id). Events
    fall in the day before `arrival`, 0.1% bad rows and 0.1% duplicates, over 5,000 customers.

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
    return frame.with_columns(
        identifier=pl.when(generated.is_null()).then(pl.col("identifier")).otherwise(random_id),
        payload_region=pl.lit("eu-west-1"),
        payload_model=pl.format("model-{}-large-2026-10", n % 7),
        payload_request_id=pl.format("req_{}{}", n, n % 1_000_003),
    )


def _csv_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    return buffer.getvalue()


def _json_text(column: str) -> pl.Expr:
    """The column as a JSON string (null as null)."""
    escaped = (
        pl.col(column).str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True)
    )
    return pl.when(pl.col(column).is_null()).then(pl.lit("null")).otherwise(pl.lit('"') + escaped + '"')


def _jsonl_bytes(frame: pl.DataFrame) -> bytes:
    """The same rows as JSON Lines in Stripe's meter-event shape: the payload_* fields as the members of
    a nested `payload` object, the timestamp and a numeric value as JSON numbers."""
    numeric = pl.col("payload_value").str.contains(r"^-?[0-9]+(\.[0-9]+)?$")
    parts: list[str | pl.Expr] = [
        '{"identifier":', _json_text("identifier"),
        ',"timestamp":', pl.col("timestamp").fill_null("null"),
        ',"event_name":', _json_text("event_name"),
        ',"payload":{"stripe_customer_id":', _json_text("payload_stripe_customer_id"),
        ',"value":', pl.when(numeric).then(pl.col("payload_value")).otherwise(_json_text("payload_value")),
        ',"region":', _json_text("payload_region"),
        ',"model":', _json_text("payload_model"),
        ',"request_id":', _json_text("payload_request_id"),
        "}}",
    ]  # fmt: skip
    exprs = [pl.lit(p) if isinstance(p, str) else p for p in parts]
    lines = frame.select(pl.concat_str(exprs).alias("line"))
    buffer = io.BytesIO()
    # Already JSON text: the CSV writer with no quoting is a fast, multi-threaded line writer.
    lines.write_csv(buffer, include_header=False, quote_style="never")
    return buffer.getvalue()


def _realistic_csv(rows: int, arrival: datetime, seed: int) -> bytes:
    return _csv_bytes(_realistic_frame(rows, arrival, seed))


def _list_all(client, prefix: str) -> list[FileVersion]:
    """Every file version under `prefix`, in key order."""
    listed: list[FileVersion] = []
    more = True
    while more:
        page, more = list_page(client, BUCKET, prefix, listed[-1].key if listed else None)
        listed += page
        more = more and bool(page)
    return sorted(listed, key=lambda f: f.key)


def _delete_prefix(client, prefix: str) -> None:
    """Free the S3 server's memory and disk of a measured workload's files."""
    keys = [f.key for f in _list_all(client, prefix)]
    for lo in range(0, len(keys), 1000):
        objects = [{"Key": key} for key in keys[lo : lo + 1000]]
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": objects, "Quiet": True})


# --- processes ---------------------------------------------------------------------------------------


@dataclass
class ProcessRun:
    """One child process, timed from start to exit."""

    seconds: float  # wall clock
    cpu: float  # user + system seconds of the process (and of its own finished children)
    peak_rss: int  # bytes
    returncode: int
    started: float  # epoch seconds
    log: Path

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text[-lines:])

    def result(self) -> dict[str, object]:
        """The JSON object a peer script prints last."""
        for line in reversed(self.log.read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return {}


def _peak_rss(pid: int) -> int:
    """The process's peak resident set so far (VmHWM), in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _run_process(argv: Sequence[str], *, env: dict[str, str] | None, log: Path) -> ProcessRun:
    """Run `argv` to its end, its output into `log`: wall clock, CPU seconds (wait4) and peak RSS.

    The peak is the process's own VmHWM, read every 20 ms until it exits: wait4's ru_maxrss cannot be
    used, as a child started by vfork + exec counts the parent's resident set at the exec."""
    log.parent.mkdir(parents=True, exist_ok=True)
    peak = 0
    with log.open("wb") as out:
        started_epoch, started = time.time(), time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                peak = max(peak, _peak_rss(proc.pid))
                time.sleep(0.02)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ProcessRun(
        seconds=seconds,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss=peak,
        returncode=proc.returncode,
        started=started_epoch,
        log=log,
    )


# --- the end-to-end workloads ------------------------------------------------------------------------

E2E_TARGET = 0.9  # end-to-end events/s / the ingest step's, at least
FILES_TARGET = 100.0  # files/s end to end for many small files, at least
DLT_TARGET = 1.5  # the product end to end this many times faster than dlt, at least
HAND_TARGET = 1.3  # the product's end-to-end time / the hand-written DuckDB script's, at most
FORMAT_LABELS = {"csv": "CSV", "jsonl": "JSON Lines"}
# The most `usage-pipeline ingest` processes a workload may take (one takes up to tick_max_runs x
# run_max_files = 2,000 files); more means something is stuck.
MAX_INVOCATIONS = 20


@dataclass(frozen=True)
class Workload:
    name: str  # what --workloads calls it
    files: int
    rows: int  # per file
    fmt: str  # csv | jsonl
    floor: bool = False  # a case of the rows-per-file table: the floor is measured too
    peers: bool = False  # the peers run on it (with --peers)
    peer_targets: bool = False  # … and the peer targets apply
    files_target: bool = False  # many small files: files/s is what counts (scaled by file count)
    gzip: bool = False  # uploaded as .<fmt>.gz
    big: bool = False  # a big-file case: peak memory is what counts

    @property
    def extension(self) -> str:
        return f"{self.fmt}.gz" if self.gzip else self.fmt

    @property
    def events(self) -> int:
        return self.files * self.rows

    @property
    def label(self) -> str:
        return f"{self.files:,} × {_count(self.rows)} {FORMAT_LABELS[self.fmt]}" + (
            " (gzip)" if self.gzip else ""
        )

    @property
    def prefix(self) -> str:
        return f"e2e/{self.name}/"

    def scaled(self, factor: float) -> Workload:
        """Fewer (or more) events: rows per file, or for many small files the number of files."""
        if factor == 1:
            return self
        if self.files_target:
            return replace(self, files=max(1, round(self.files * factor)))
        return replace(self, rows=max(1, round(self.rows * factor)))


WORKLOADS: tuple[Workload, ...] = (
    Workload("10x1M-csv", 10, 1_000_000, "csv", floor=True, peers=True, peer_targets=True),
    Workload("100x100k-csv", 100, 100_000, "csv", floor=True, peers=True, peer_targets=True),
    Workload("100x100k-jsonl", 100, 100_000, "jsonl", peers=True),
    Workload("100x10k-csv", 100, 10_000, "csv", floor=True),
    Workload("1000x100-csv", 1000, 100, "csv", files_target=True),
    # One ~1 GB file each (about 120 bytes a CSV row, 245 a JSON line; the limit is 1 GiB): read in
    # chunks, in bounded memory.
    Workload("1GB-csv", 1, 8_500_000, "csv", big=True),
    Workload("1GB-csv.gz", 1, 8_500_000, "csv", gzip=True, big=True),
    Workload("1GB-jsonl", 1, 4_200_000, "jsonl", big=True),
)
BIG_FILE_RSS_TARGET = 2 * 10**9  # bytes of peak RSS for a ~1 GB file, at most
WORKLOAD_NAMES = tuple(w.name for w in WORKLOADS)
QUICK_SCALE = 0.05


@dataclass(frozen=True)
class E2EConfig:
    workloads: tuple[Workload, ...] = WORKLOADS
    peers: bool = False

    @classmethod
    def of(cls, names: Sequence[str] | None, scale: float, peers: bool) -> E2EConfig:
        chosen = [w for w in WORKLOADS if not names or w.name in names]
        return cls(tuple(w.scaled(scale) for w in chosen), peers)


@dataclass
class E2ERun:
    """The product end to end on one workload: its `ingest` process(es), and where the time went."""

    invocations: list[ProcessRun]
    events: int
    files: int
    idle: ProcessRun | None = None  # one more `ingest`, nothing new: the fixed cost of a process
    profile: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.invocations)

    @property
    def cpu(self) -> float:
        return sum(p.cpu for p in self.invocations)

    @property
    def peak_rss(self) -> int:
        return max(p.peak_rss for p in self.invocations)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def files_rate(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0


@dataclass
class PeerRun:
    name: str  # "dlt" | "duckdb"
    process: ProcessRun | None
    events: int
    rows_stored: int | None = None
    phases: dict[str, float] = field(default_factory=dict)
    problem: str | None = None  # why there is no figure

    @property
    def seconds(self) -> float | None:
        return None if self.problem or self.process is None else self.process.seconds

    @property
    def rate(self) -> float | None:
        seconds = self.seconds
        return self.events / seconds if seconds else None


@dataclass
class WorkloadResult:
    workload: Workload
    size_bytes: int = 0  # of its S3 objects
    step: Timing | None = None
    floor: Timing | None = None
    e2e: E2ERun | None = None
    peers: dict[str, PeerRun] = field(default_factory=dict)


def _usage_pipeline_command() -> list[str]:
    """`usage-pipeline` as installed beside this Python (its console script), else `python -m`."""
    script = Path(sys.executable).parent / "usage-pipeline"
    return [str(script)] if script.exists() else [sys.executable, "-m", "usage_pipeline.cli"]


def _e2e_env(endpoint: str, workload: Workload, root: Path) -> dict[str, str]:
    """The environment of a `usage-pipeline ingest` on a fresh Dagster instance and a fresh lake."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_") and k != "DAGSTER_HOME"}
    env.update(
        DAGSTER_HOME=str(root / "dagster_home"),
        USAGE_LAKE=f"sqlite:{root / 'lake' / 'catalog.sqlite'}",
        USAGE_LAKE_DATA=f"{root / 'lake' / 'data'}/",
        AWS_ENDPOINT_URL_S3=endpoint,
        USAGE_BUCKET=BUCKET,
        USAGE_PREFIX=workload.prefix,
    )
    return env


def _ledger(root: Path) -> tuple[int, int]:
    """(file versions, rows) in the ledger of the end-to-end lake under `root`."""
    lake = Lake(catalog=f"sqlite:{root / 'lake' / 'catalog.sqlite'}", data_path=f"{root / 'lake' / 'data'}/")
    with read_only(lake) as conn:
        if conn is None:
            return 0, 0
        files, rows = conn.execute(
            "SELECT count(*), coalesce(sum(rows_total), 0) FROM ingested_files"
        ).fetchone()
    return int(files), int(rows)


def _e2e(endpoint: str, workload: Workload, root: Path) -> E2ERun:
    """`usage-pipeline ingest` until the ledger holds every file of the workload (one process takes up
    to 1,000 files), then once more with nothing new."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = _e2e_env(endpoint, workload, root)
    command = [*_usage_pipeline_command(), "ingest"]
    run = E2ERun(invocations=[], events=0, files=0)
    while len(run.invocations) < MAX_INVOCATIONS:
        process = _run_process(command, env=env, log=root / f"ingest-{len(run.invocations) + 1}.log")
        run.invocations.append(process)
        if process.returncode != 0:
            raise click.ClickException(
                f"`usage-pipeline ingest` exited {process.returncode} on {workload.label}:\n{process.tail()}"
            )
        run.files, run.events = _ledger(root)
        if run.files >= workload.files:
            break
    else:
        raise click.ClickException(
            f"{workload.label}: {run.files} files ingested after {MAX_INVOCATIONS} `ingest` processes"
        )
    run.idle = _run_process(command, env=env, log=root / "ingest-nothing-new.log")
    run.profile = _profile(root / "dagster_home", run.invocations)
    return run


def _profile(home: Path, invocations: list[ProcessRun]) -> dict[str, float]:
    """Where the processes' time went, in seconds, from the runs they recorded in the Dagster instance:

    * before the first run: interpreter start, imports, definitions, opening the lake, the sensor
      evaluation (listing, ledger read), the cursor saved;
    * in the runs (run created -> run success): `ingest_files` (its own `seconds` metadata); from the
      step's start to its first materialization less that: opening the lake, the checks and table
      counts; the rest: Dagster (creating and starting the run and step, writing events);
    * between and after the runs: reading the outcomes, printing, exiting."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        records = sorted(instance.get_run_records(), key=lambda r: r.create_timestamp)
        runs = ingest = in_step = 0.0
        spans: list[tuple[float, float]] = []
        for record in records:
            created = record.create_timestamp
            created_at = (created if created.tzinfo else created.replace(tzinfo=UTC)).timestamp()
            logs = instance.all_logs(record.dagster_run.run_id)
            ended = max((e.timestamp for e in logs), default=record.end_time or created_at)
            spans.append((created_at, ended))
            runs += ended - created_at
            step_start = next((e.timestamp for e in logs if e.dagster_event_type == "STEP_START"), None)
            for entry in logs:
                materialization = entry.asset_materialization
                if materialization is None:
                    continue
                seconds = materialization.metadata.get("seconds")
                if seconds is not None:
                    ingest += float(seconds.value)  # type: ignore[union-attr,arg-type]
                    if step_start is not None:
                        in_step += entry.timestamp - step_start
                    break
    finally:
        instance.dispose()
    wall = sum(p.seconds for p in invocations)
    before = 0.0
    for process in invocations:
        inside = [s for s in spans if process.started <= s[0] <= process.started + process.seconds]
        if inside:
            before += inside[0][0] - process.started
    return {
        "process": wall,
        "before the first run": before,
        "runs": runs,
        "ingest_files": ingest,
        "lake open + checks + counts": max(0.0, in_step - ingest),
        "Dagster": max(0.0, runs - in_step),
        "between and after runs": max(0.0, wall - before - runs),
        "runs_count": float(len(records)),
    }


# --- the peers ---------------------------------------------------------------------------------------

# dlt in its own venv (never a dependency of the product), on the product's DuckDB version: the same
# engine underneath, so the comparison is of the pipelines.
PEER_REQUIREMENTS = ("dlt[duckdb,filesystem,s3,parquet]==1.31.0", f"duckdb=={duckdb.__version__}")
PEER_LABELS = {"dlt": "dlt (filesystem → DuckDB file)", "duckdb": "hand-written DuckDB script"}
BENCH_SCRIPTS = Path(__file__).resolve().parents[2] / "bench"


def _peer_python(workdir: Path) -> Path:
    """The Python of the peer venv under `workdir`, created and installed when missing or out of date."""
    venv = workdir / "peer-venv"
    python = venv / "bin" / "python"
    marker = venv / "bench-requirements.txt"
    wanted = "\n".join(PEER_REQUIREMENTS) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    click.echo(f"installing {', '.join(PEER_REQUIREMENTS)} into {venv} (once; reused next time) …")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PEER_REQUIREMENTS],
        check=True,
    )
    marker.write_text(wanted)
    return python


def _peer(name: str, argv: list[str], workload: Workload, events: int, log: Path) -> PeerRun:
    process = _run_process(argv, env=dict(os.environ), log=log)
    run = PeerRun(name, process, events)
    if process.returncode != 0:
        run.problem = f"exited {process.returncode}, see {log}"
        click.echo(f"  {PEER_LABELS[name]} failed on {workload.label}:\n{process.tail()}", err=True)
        return run
    result = process.result()
    run.rows_stored = int(result.get("rows_stored", 0))  # type: ignore[call-overload]
    run.phases = {str(k): float(v) for k, v in dict(result.get("phases", {})).items()}  # type: ignore[call-overload]
    return run


def _peers(
    endpoint: str, workload: Workload, events: int, root: Path, dlt_python: Path | str | None, *, keep: bool
) -> dict[str, PeerRun]:
    """The hand-written DuckDB script (this Python), then dlt (its venv), each a fresh process and store."""
    common = [
        "--endpoint",
        endpoint,
        "--bucket",
        BUCKET,
        "--prefix",
        workload.prefix,
        "--format",
        workload.fmt,
    ]
    peers: dict[str, PeerRun] = {}

    def fresh(folder: Path) -> Path:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def done_with(folder: Path) -> None:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        os.sync()

    script, folder = BENCH_SCRIPTS / "peer_duckdb.py", fresh(root / "peer-duckdb")
    argv = [sys.executable, str(script), *common, "--db", str(folder / "peer.duckdb")]
    peers["duckdb"] = _peer("duckdb", argv, workload, events, root / "peer-duckdb.log")
    done_with(folder)
    if isinstance(dlt_python, str):  # why dlt could not be installed
        peers["dlt"] = PeerRun("dlt", None, events, problem=dlt_python)
    elif dlt_python is not None:
        script, folder = BENCH_SCRIPTS / "peer_dlt.py", fresh(root / "peer-dlt")
        argv = [str(dlt_python), str(script), *common, "--out", str(folder)]
        peers["dlt"] = _peer("dlt", argv, workload, events, root / "peer-dlt.log")
        done_with(folder)
    return peers


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
    """A ratio that must stay at or under `target`."""
    if ratio is None:
        return "-"
    return f"{ratio:.2f}× {'met' if ratio <= target else '**NOT met**'}"


def _verdict_at_least(value: float | None, target: float, unit: str = "×") -> str:
    """A figure that must reach `target`."""
    if value is None:
        return "-"
    shown = f"{value:.2f}×" if unit == "×" else f"{value:,.0f} {unit}"
    return f"{shown} {'met' if value >= target else '**NOT met**'}"


def _plain(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}×"


def _median(timings: list[Timing]) -> str:
    return f"{statistics.median(t.seconds for t in timings):.2f}" if timings else "-"


def _rate(timing: Timing | None) -> str:
    return f"{timing.rate:,.0f}" if timing is not None else "-"


def _count(n: int) -> str:
    """1M, 50M, 200k, 999."""
    if n >= 1_000_000:
        return f"{n / 1e6:g}M"
    return f"{n / 1e3:g}k" if n >= 1000 else str(n)


def _megabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:,.0f} MB"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table, its columns padded so that it reads in a terminal too."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(f"{c!s:<{w}}" for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)]


def summary_table(results: dict[str, StorageResult], config: BenchConfig) -> list[str]:
    kinds = list(results)
    per_file = _count(config.events_per_file)
    cpu_note = "  (same, CPU seconds)"
    rows: list[tuple[str, Callable[[StorageResult], str], str]] = [
        ("floor, events/s", lambda r: _rate(r.floor), ""),
        ("ingest step, events/s", lambda r: _rate(r.ingest), ""),
        (
            "ingest ÷ floor (time)",
            lambda r: _verdict(r.ingest_ratio(), INGEST_TARGET),
            f"≤ {INGEST_TARGET}×",
        ),
        (cpu_note, lambda r: _plain(r.ingest_ratio(cpu=True)), ""),
    ]
    if config.history or config.same_day_history:
        rows.append((f"{per_file} into an empty store, s", lambda r: _median(r.empty), ""))
    if config.history:
        rows += [
            (
                f"{per_file} into {_count(config.history)} stored over a year, s",
                lambda r: _median(r.year),
                "",
            ),
            (
                "  with history ÷ empty",
                lambda r: _verdict(r.history_ratio(r.year), HISTORY_TARGET),
                f"≤ {HISTORY_TARGET}×",
            ),
            (cpu_note, lambda r: _plain(r.history_ratio(r.year, cpu=True)), ""),
        ]
    if config.same_day_history:
        rows += [
            (
                f"{per_file} into {_count(config.same_day_history)} stored on the same day, s",
                lambda r: _median(r.same_day),
                "",
            ),
            (
                "  same-day history ÷ empty",
                lambda r: _verdict(r.history_ratio(r.same_day), HISTORY_TARGET),
                f"≤ {HISTORY_TARGET}×",
            ),
            (cpu_note, lambda r: _plain(r.history_ratio(r.same_day, cpu=True)), ""),
        ]
    header = [
        f"{config.files} × {per_file} Stripe CSV",
        *(STORAGE_LABELS[k] for k in kinds),
        "target",
    ]
    return _markdown(header, [[label, *(cell(results[k]) for k in kinds), t] for label, cell, t in rows])


def _timed(seconds: float, rate: float, unit: str = "/s") -> str:
    return f"{rate:,.0f}{unit} ({seconds:.2f} s)"


def e2e_table(results: list[WorkloadResult]) -> list[str]:
    """The product end to end vs the ingest step, per workload."""
    rows: list[list[str]] = []
    for r in results:
        w, step, e2e = r.workload, r.step, r.e2e
        if step is None or e2e is None:
            continue
        ratio = e2e.rate / step.rate if step.rate else None
        rows.append(
            [
                w.label,
                f"{e2e.events:,}",
                _timed(step.seconds, step.rate),
                _timed(e2e.seconds, e2e.rate),
                _megabytes(e2e.peak_rss),
                f"{e2e.cpu:.1f} s",
                _verdict_at_least(ratio, E2E_TARGET),
                f"≥ {E2E_TARGET}×",
            ]
        )
        if w.files_target:
            step_files = w.files / step.seconds if step.seconds else 0.0
            rows.append(
                [
                    f"{w.label}: files/s",
                    f"{e2e.files:,} files",
                    _timed(step.seconds, step_files, " files/s"),
                    _timed(e2e.seconds, e2e.files_rate, " files/s"),
                    "",
                    "",
                    _verdict_at_least(e2e.files_rate, FILES_TARGET, "files/s"),
                    f"≥ {FILES_TARGET:.0f} files/s",
                ]
            )
    header = [
        "workload (lake)",
        "events",
        "ingest step",
        "end to end",
        "peak RSS (e2e)",
        "CPU (e2e)",
        "end to end ÷ step (events/s)",
        "target",
    ]
    return _markdown(header, rows)


def big_files_table(results: list[WorkloadResult]) -> list[str]:
    """One big file per format: its rate and the peak memory of the `ingest` process that took it."""
    rows = []
    for r in results:
        w, step, e2e = r.workload, r.step, r.e2e
        if not w.big or step is None or e2e is None:
            continue
        rss_ok = e2e.peak_rss <= BIG_FILE_RSS_TARGET
        rows.append(
            [
                f"{FORMAT_LABELS[w.fmt]}{' (gzip)' if w.gzip else ''}, {_count(w.rows)} rows",
                _megabytes(r.size_bytes),
                _timed(step.seconds, step.rate),
                _timed(e2e.seconds, e2e.rate),
                f"{_megabytes(e2e.peak_rss)} {'met' if rss_ok else '**NOT met**'}",
                f"≤ {_megabytes(BIG_FILE_RSS_TARGET)}",
            ]
        )
    header = ["one file", "S3 object", "ingest step", "end to end", "peak RSS (e2e process)", "target"]
    return _markdown(header, rows) if rows else []


def rows_per_file_table(results: list[WorkloadResult]) -> list[str]:
    """Floor vs ingest step (vs end to end) by rows per file, CSV into the lake."""
    rows: list[list[str]] = []
    for r in sorted((r for r in results if r.floor is not None), key=lambda r: r.workload.rows):
        w, floor, step, e2e = r.workload, r.floor, r.step, r.e2e
        assert floor is not None
        rows.append(
            [
                _count(w.rows),
                f"{w.files:,}",
                _rate(floor),
                _rate(step),
                f"{e2e.rate:,.0f}" if e2e else "-",
                _verdict(step.seconds / floor.seconds if step and floor.seconds else None, INGEST_TARGET),
                f"≤ {INGEST_TARGET}×",
                _plain(e2e.seconds / floor.seconds if e2e and floor.seconds else None),
            ]
        )
    header = [
        "rows per file",
        "files",
        "floor, events/s",
        "ingest step, events/s",
        "end to end, events/s",
        "step ÷ floor (time)",
        "target",
        "end to end ÷ floor (time)",
    ]
    return _markdown(header, rows)


JSON_TARGET = 1.5  # JSON Lines' time per event / CSV's, at most


def json_vs_csv_table(results: list[WorkloadResult]) -> list[str]:
    """JSON Lines against CSV of the same rows and files (100 x 100k): time per event, step and end to end."""
    by_name = {r.workload.name: r for r in results}
    csv, jsonl = by_name.get("100x100k-csv"), by_name.get("100x100k-jsonl")
    if csv is None or jsonl is None:
        return []
    rows = []
    for what, a, b in (
        ("ingest step", csv.step, jsonl.step),
        ("end to end", csv.e2e, jsonl.e2e),
    ):
        if a is None or b is None or not a.rate or not b.rate:
            continue
        rows.append([what, f"{a.rate:,.0f}", f"{b.rate:,.0f}", _verdict(a.rate / b.rate, JSON_TARGET)])
    header = [
        f"{csv.workload.files:,} × {_count(csv.workload.rows)}",
        "CSV, events/s",
        "JSON Lines, events/s",
        "JSON Lines ÷ CSV (time per event)",
    ]
    return _markdown(header, rows) if rows else []


def peers_table(results: list[WorkloadResult]) -> list[str]:
    """The product end to end beside dlt and the hand-written DuckDB script, on the same S3 files."""
    rows: list[list[str]] = []

    def cell(peer: PeerRun | None) -> str:
        if peer is None:
            return "-"
        if peer.problem or peer.process is None:
            return f"failed: {peer.problem}"
        return f"{_timed(peer.process.seconds, peer.rate or 0.0)}, {_megabytes(peer.process.peak_rss)}"

    for r in results:
        e2e = r.e2e
        if e2e is None or not r.peers:
            continue
        dlt, hand = r.peers.get("dlt"), r.peers.get("duckdb")
        faster = dlt.seconds / e2e.seconds if dlt and dlt.seconds and e2e.seconds else None
        within = e2e.seconds / hand.seconds if hand and hand.seconds else None
        targets = r.workload.peer_targets
        rows.append(
            [
                r.workload.label,
                f"{_timed(e2e.seconds, e2e.rate)}, {_megabytes(e2e.peak_rss)}",
                cell(dlt),
                cell(hand),
                _verdict_at_least(faster, DLT_TARGET) if targets else _plain(faster),
                f"≥ {DLT_TARGET}×" if targets else "",
                _verdict(within, HAND_TARGET) if targets else _plain(within),
                f"≤ {HAND_TARGET}×" if targets else "",
            ]
        )
    header = [
        "workload",
        "product end to end (events/s, time, peak RSS)",
        PEER_LABELS["dlt"],
        PEER_LABELS["duckdb"],
        "product speed ÷ dlt's",
        "target",
        "product time ÷ hand-written's",
        "target",
    ]
    return _markdown(header, rows)


PROFILE_COLUMNS = (
    "process",
    "before the first run",
    "runs",
    "ingest_files",
    "lake open + checks + counts",
    "Dagster",
    "between and after runs",
)


def profile_table(results: list[WorkloadResult]) -> list[str]:
    """Where the product's end-to-end time goes, seconds summed over its `ingest` processes."""
    rows: list[list[str]] = []
    for r in results:
        e2e = r.e2e
        if e2e is None:
            continue
        p = e2e.profile
        runs = int(p.get("runs_count", 0))
        per_run = p.get("runs", 0.0) / runs if runs else 0.0
        rows.append(
            [
                r.workload.label,
                *(f"{p.get(c, 0.0):.2f}" for c in PROFILE_COLUMNS),
                f"{runs} ({per_run:.2f} s each)",
                f"{e2e.idle.seconds:.2f}" if e2e.idle else "-",
            ]
        )
    header = [
        "workload",
        "process(es), s",
        "start-up + sensor (before the first run)",
        "Dagster runs",
        "… ingest_files",
        "… lake open + checks + counts",
        "… Dagster itself",
        "between / after runs",
        "runs",
        "an `ingest` with nothing new, s",
    ]
    return _markdown(header, rows)


# --- the run -----------------------------------------------------------------------------------------


def run_bench(
    *,
    config: BenchConfig,
    workdir: Path,
    keep: bool = False,
    e2e: E2EConfig | None = None,
    storage: bool = True,
) -> None:
    """The storage part (floor, ingest step, history: unless `storage` is False), then the end-to-end
    workloads of `e2e` (none when None), with the peers when `e2e.peers`."""
    workdir.mkdir(parents=True, exist_ok=True)
    dlt_python: Path | str | None = None
    if e2e is not None and e2e.peers:
        if not (BENCH_SCRIPTS / "peer_duckdb.py").exists():
            raise click.ClickException(f"--peers needs the scripts of a checkout's {BENCH_SCRIPTS}/")
        try:
            dlt_python = _peer_python(workdir)
        except (OSError, subprocess.CalledProcessError) as exc:
            dlt_python = f"dlt could not be installed ({exc})"
            click.echo(dlt_python, err=True)
    # moto in its own process, so serving bytes does not compete with the measured code's GIL.
    with local_s3(bucket=BUCKET, own_process=True) as endpoint:
        try:
            _measure(
                endpoint, config=config, workdir=workdir, keep=keep, e2e=e2e, storage=storage, dlt=dlt_python
            )
        finally:
            if not keep:
                for kind in (*config.storages, "e2e"):
                    shutil.rmtree(workdir / kind, ignore_errors=True)
                if not any(workdir.iterdir()):
                    workdir.rmdir()


def _measure(
    endpoint: str,
    *,
    config: BenchConfig,
    workdir: Path,
    keep: bool,
    e2e: E2EConfig | None,
    storage: bool,
    dlt: Path | str | None,
) -> None:
    run_started = time.perf_counter()
    for key, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    arrival = datetime.now(UTC).replace(microsecond=0)
    results: dict[str, StorageResult] = {}
    if storage:
        results = _measure_storage(
            client, endpoint, config=config, workdir=workdir, keep=keep, arrival=arrival
        )
    workloads: list[WorkloadResult] = []
    for workload in e2e.workloads if e2e is not None else ():
        workloads.append(
            _measure_workload(
                client,
                endpoint,
                workload,
                workdir / "e2e" / workload.name,
                arrival,
                keep=keep,
                dlt=dlt if e2e is not None and e2e.peers else None,
                peers=e2e is not None and e2e.peers,
            )
        )

    click.echo(f"\n## usage-pipeline bench ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores)")
    if results:
        click.echo(
            f"\n### Ingest step vs floor, and history ({config.files} files × {config.events_per_file:,} "
            f"Stripe CSV events; history: median of {config.history_files} file(s), each into every store)\n"
        )
        for line in summary_table(results, config):
            click.echo(line)
    measured = [w for w in workloads if w.e2e is not None]
    if measured:
        click.echo(
            "\n### End to end (`usage-pipeline ingest` process, fresh Dagster instance and lake) vs the "
            "ingest step (`ingest_files` in-process), same S3 files\n"
        )
        for line in e2e_table(measured):
            click.echo(line)
        click.echo(
            "\nevents/s: the files' rows over the wall clock, for end to end from the process's start to its "
            "exit (start-up, sensor evaluation, one Dagster run per 500 files, checks, summary)."
        )
    if any(w.floor is not None for w in workloads):
        click.echo("\n### By rows per file: floor vs ingest step vs end to end (Stripe CSV, lake)\n")
        for line in rows_per_file_table(workloads):
            click.echo(line)
    big = big_files_table(workloads)
    if big:
        click.echo("\n### Big files: one file each, read in 64 MiB chunks within its one transaction\n")
        for line in big:
            click.echo(line)
    json_lines = json_vs_csv_table(workloads)
    if json_lines:
        click.echo(
            f"\n### JSON Lines vs CSV, same rows (target: JSON Lines ≤ {JSON_TARGET}× CSV's time per event)\n"
        )
        for line in json_lines:
            click.echo(line)
    if any(w.peers for w in workloads):
        click.echo(
            "\n### Peers, same S3 files (each a fresh process into a fresh store; events/s of the "
            "files' rows)\n"
        )
        for line in peers_table(workloads):
            click.echo(line)
        click.echo(
            f"\ndlt {PEER_REQUIREMENTS[0].partition('==')[2]}: filesystem source (s3fs) + read_csv_duckdb "
            "(Arrow) / JSON Lines as dicts, write disposition append (no validation, no dedup), Parquet load "
            "files. Hand-written: boto3 GET + DuckDB read_csv / read_json, in-file DISTINCT ON + anti-join "
            "on (customer, identifier), INSERT, one transaction per file. "
            f"Both on DuckDB {duckdb.__version__}."
        )
    if measured:
        click.echo("\n### Where the end-to-end time goes (seconds, from the runs' Dagster events)\n")
        for line in profile_table(measured):
            click.echo(line)
        click.echo(
            "\nbefore the first run: interpreter start, imports, definitions, opening the lake, the sensor "
            "evaluation; in the runs: ingest_files (its `seconds` metadata), then opening the lake + the "
            "five checks + table counts, and Dagster itself (creating and starting runs, writing events); "
            "after: reading the outcomes, printing, exit."
        )
    click.echo(f"\nbench run: {time.perf_counter() - run_started:.0f} s")


def _upload(client, prefix: str, workload: Workload, arrival: datetime) -> None:
    for i in range(workload.files):
        frame = _realistic_frame(workload.rows, arrival, seed=i)
        body = _csv_bytes(frame) if workload.fmt == "csv" else _jsonl_bytes(frame)
        del frame
        if workload.gzip:
            body = gzip.compress(body, compresslevel=1)
        client.put_object(Bucket=BUCKET, Key=f"{prefix}bench-{i:04d}.{workload.extension}", Body=body)


def _measure_storage(
    client, endpoint: str, *, config: BenchConfig, workdir: Path, keep: bool, arrival: datetime
) -> dict[str, StorageResult]:
    """Floor and ingest step on the lake and on a native DuckDB file, then the history figures."""

    def done_with(folder: Path) -> None:
        """Stores are dropped as soon as measured (a 50M-event history is a few GB), unless kept."""
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)

    n_upload = max(config.files, config.history_files if config.history or config.same_day_history else 0)
    click.echo(
        f"generating {n_upload} Stripe CSV files x {config.events_per_file:,} events "
        f"and uploading them to {endpoint} …"
    )
    for i in range(n_upload):
        body = _realistic_csv(config.events_per_file, arrival, seed=i)
        client.put_object(Bucket=BUCKET, Key=f"incoming/bench-{i:03d}.csv", Body=body)
    listed = _list_all(client, "incoming/")
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
    _delete_prefix(client, "incoming/")
    return results


def _measure_workload(
    client,
    endpoint: str,
    workload: Workload,
    root: Path,
    arrival: datetime,
    *,
    keep: bool,
    dlt: Path | str | None,
    peers: bool,
) -> WorkloadResult:
    """Upload the workload's files; floor (row-count cases), ingest step, end to end, peers; drop them."""
    click.echo(f"\n{workload.label} ({workload.name}): generating and uploading {workload.files:,} files …")
    _upload(client, workload.prefix, workload, arrival)
    files = _list_all(client, workload.prefix)
    click.echo(f"  {len(files):,} files, {sum(f.size for f in files) / 1e6:,.0f} MB")
    result = WorkloadResult(workload, size_bytes=sum(f.size for f in files))

    def done_with(folder: Path) -> None:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        os.sync()  # the next measurement does not pay for writing back this one's files

    shutil.rmtree(root, ignore_errors=True)
    if workload.floor:
        result.floor = _floor(client, files, Store("lake", root / "floor").fresh())
        click.echo(result.floor.line())
        done_with(root / "floor")
    result.step = _ingest(client, files, Store("lake", root / "step").fresh(), "ingest step (ingest_files)")
    click.echo(result.step.line())
    done_with(root / "step")
    e2e = result.e2e = _e2e(endpoint, workload, root / "product")
    click.echo(
        Timing("end to end (usage-pipeline ingest)", e2e.events, e2e.seconds, e2e.cpu).line()
        + f"  peak RSS {_megabytes(e2e.peak_rss)}, {len(e2e.invocations)} process(es), "
        f"{int(e2e.profile.get('runs_count', 0))} run(s)"
    )
    if e2e.events != result.step.events:
        click.echo(
            f"  ! the ledgers differ: {e2e.events:,} rows end to end, {result.step.events:,} in the step"
        )
    if e2e.idle is not None:
        click.echo(f"  an `ingest` with nothing new: {e2e.idle.seconds:.2f} s")
    done_with(root / "product")
    if peers and workload.peers:
        result.peers = _peers(endpoint, workload, result.step.events, root, dlt, keep=keep)
        for peer in result.peers.values():
            if peer.process is None or peer.problem:
                click.echo(f"  {PEER_LABELS[peer.name]}: {peer.problem}")
                continue
            phases = ", ".join(f"{k} {v:.2f} s" for k, v in peer.phases.items())
            click.echo(
                Timing(PEER_LABELS[peer.name], peer.events, peer.process.seconds, peer.process.cpu).line()
                + f"  peak RSS {_megabytes(peer.process.peak_rss)}, {peer.rows_stored:,} rows stored "
                f"({phases})"
            )
    _delete_prefix(client, workload.prefix)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


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
