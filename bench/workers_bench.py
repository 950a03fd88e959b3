"""Ingest throughput with 1, 2 and 4 worker processes on the many-machines lake: a Postgres catalog (a
throwaway server on loopback) with its Parquet data on S3 (moto's server), the usage files on the same S3.

    .venv/bin/python bench/workers_bench.py [--files 10] [--rows 1000000] [--workers 1,2,4]

Each worker is its own process running the product's ingest path (`ingest_files`: GET, parse, validate,
dedup, rejects, ledger, one transaction per file) over its share of the files, as separate Dagster run
workers would. Every worker count starts from an empty lake. Printed per worker count: wall time, events/s,
and per file the commit section (waiting for the lake's write turn, then the transaction: dedup against
what is stored, inserts, commit) split into wait and work, medians.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # usage_pipeline_tests.postgres

from usage_pipeline.cli.generate import generate_usage_frame, serialize
from usage_pipeline.cli.local_s3 import local_s3
from usage_pipeline.core.ingest.s3 import s3_client
from usage_pipeline_tests.postgres import postgres_server, unavailable_reason

BUCKET = "usage-workers-bench"


def _worker(catalog: str, data: str, endpoint: str, keys: list[str], threads: int, results) -> None:
    """One worker process: ingest `keys` into the lake; report per-file (wait, work) seconds."""
    from usage_pipeline.core.ingest import store
    from usage_pipeline.core.ingest.model import ValidationLimits
    from usage_pipeline.core.ingest.runner import ingest_files
    from usage_pipeline.core.ingest.s3 import list_page, read_version
    from usage_pipeline.core.storage import lake as lake_module
    from usage_pipeline.settings import Settings, lake_of

    lake = lake_of(Settings(lake=catalog, lake_data=data, s3_endpoint_url=endpoint))
    timings: list[tuple[float, float]] = []
    original_turn, original_transact = lake_module._turn, store.transact
    waited = [0.0]

    from contextlib import contextmanager

    @contextmanager
    def timed_turn(conn, what):
        started = time.perf_counter()
        with original_turn(conn, what):
            waited[0] += time.perf_counter() - started
            yield

    def timed_transact(conn, body, **kwargs):
        waited[0] = 0.0
        started = time.perf_counter()
        result = original_transact(conn, body, **kwargs)
        total = time.perf_counter() - started
        timings.append((waited[0], total - waited[0]))
        return result

    lake_module._turn = timed_turn
    store.transact = timed_transact
    client = s3_client(endpoint)
    listed = {v.key: v for v in list_page(client, BUCKET, "incoming/", None, max_keys=1000)[0]}
    files = [listed[k] for k in keys]
    with lake_module.connect(lake) as conn:
        # Each worker gets its share of the cores, as run workers on their own machines would have theirs.
        conn.execute(f"SET threads = {threads}")
        report = ingest_files(
            files,
            fetch=lambda f: read_version(client, BUCKET, f),
            conn=conn,
            max_file_bytes=1 << 31,
            limits=ValidationLimits(),
            run_id=f"bench-{uuid.uuid4().hex[:8]}",
        )
    results.put({"events": sum(o.rows_accepted for o in report.new_outcomes), "timings": timings})


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"workers_bench: {reason}")
    counts = [int(n) for n in args.workers.split(",")]
    with local_s3(own_process=True) as endpoint, postgres_server() as pg:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        arrival = datetime.now(UTC)
        keys = []
        started = time.perf_counter()
        for i in range(args.files):
            frame = generate_usage_frame(
                layout="stripe", rows=args.rows, arrival=arrival, seed=i, key_hint=f"w{i}", error_rate=0.001
            )
            key = f"incoming/w-{i:02d}.csv"
            client.put_object(Bucket=BUCKET, Key=key, Body=serialize(frame, "stripe", "csv"))
            keys.append(key)
        print(
            f"{args.files} files x {args.rows:,} Stripe CSV events on local S3 "
            f"({time.perf_counter() - started:.0f} s to write); lake: Postgres catalog on loopback, "
            "data on the same local S3 server",
            flush=True,
        )
        rows = []
        for n in counts:
            catalog = f"postgres:{pg.dsn(pg.create_database())}"
            data = f"s3://{BUCKET}/lake-{n}/"
            context = multiprocessing.get_context("spawn")
            results = context.Queue()
            shares = [keys[i::n] for i in range(n)]
            started = time.perf_counter()
            threads = max(1, (os.cpu_count() or 1) // n)
            procs = [
                context.Process(target=_worker, args=(catalog, data, endpoint, share, threads, results))
                for share in shares
            ]
            for p in procs:
                p.start()
            outcomes = []
            while len(outcomes) < len(procs):
                try:
                    outcomes.append(results.get(timeout=5))
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        sys.exit("workers_bench: a worker failed (its error is above)")
            for p in procs:
                p.join()
            wall = time.perf_counter() - started
            events = sum(o["events"] for o in outcomes)
            timings = [t for o in outcomes for t in o["timings"]]
            waits, works = [w for w, _ in timings], [k for _, k in timings]
            rows.append(
                (
                    n,
                    wall,
                    events / wall,
                    statistics.fmean(waits or [0.0]),
                    max(waits, default=0.0),
                    _median(works),
                    max(works, default=0.0),
                )
            )
            print(f"  {n} worker(s) done: {events:,} events in {wall:.1f} s", flush=True)
    print()
    print(
        "| workers | wall | events/s | vs 1 worker | per file: wait for the write turn (mean / max) "
        "| transaction in the turn (median / max) |"
    )
    print("|---|---|---|---|---|---|")
    base = rows[0][2]
    for n, wall, rate, wait, wait_max, work, worst in rows:
        print(
            f"| {n} | {wall:.1f} s | {rate:,.0f} | {rate / base:.2f}x "
            f"| {wait:.2f} s / {wait_max:.2f} s | {work:.2f} s / {worst:.2f} s |"
        )


if __name__ == "__main__":
    main()
