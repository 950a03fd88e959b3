"""A peer of the product's ingest for `usage-pipeline bench --peers`: a hand-written DuckDB script.

    .venv/bin/python bench/peer_duckdb.py --endpoint http://127.0.0.1:PORT --bucket B --prefix P/ \\
        --format csv|jsonl --db OUT.duckdb

What someone would write by hand with plain `duckdb` and `boto3` (no product code): list the prefix, then
per file (in key order) GET it from S3, read it with DuckDB's `read_csv` / `read_json` (all text), keep the
rows with a customer, an identifier and an integer timestamp, drop in-file duplicates of the Stripe dedup
key (customer, identifier), anti-join on that key against the stored table, INSERT, one transaction per
file, into a native DuckDB file. No validation beyond that, no rejects, no ledger, no lineage.

The bytes are handed to DuckDB through a temporary file in memory (/dev/shm where there is one): DuckDB
reads a file ~15-25% faster than the same bytes as a Python file object (`read_csv(io.BytesIO(...))`).

Prints one JSON object on stdout: files, rows stored, and seconds per phase (GET, read + insert).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import boto3
import duckdb

CREATE = """
    CREATE TABLE IF NOT EXISTS usage_events (
        customer VARCHAR NOT NULL, identifier VARCHAR NOT NULL, event_name VARCHAR, ts TIMESTAMP NOT NULL,
        value VARCHAR, region VARCHAR, model VARCHAR, request_id VARCHAR, file_key VARCHAR
    )
"""

# The rows of one file, as text, under the table's column names.
CSV_ROWS = """
    SELECT payload_stripe_customer_id AS customer, identifier, event_name, "timestamp" AS epoch,
           payload_value AS value, payload_region AS region, payload_model AS model,
           payload_request_id AS request_id
    FROM read_csv($path, all_varchar = true, header = true)
"""
JSONL_ROWS = """
    SELECT payload.stripe_customer_id AS customer, identifier, event_name, "timestamp" AS epoch,
           payload.value AS value, payload.region AS region, payload.model AS model,
           payload.request_id AS request_id
    FROM read_json($path, format = 'newline_delimited', columns = {
        identifier: 'VARCHAR', "timestamp": 'VARCHAR', event_name: 'VARCHAR',
        payload: 'STRUCT(stripe_customer_id VARCHAR, value VARCHAR, region VARCHAR, model VARCHAR,
                         request_id VARCHAR)'
    })
"""

# Usable rows, first of each dedup key in the file, not stored yet.
INSERT = """
    INSERT INTO usage_events
    SELECT n.customer, n.identifier, n.event_name, n.ts, n.value, n.region, n.model, n.request_id, $file
    FROM (
        SELECT DISTINCT ON (customer, identifier) *
        FROM (SELECT *, make_timestamp(TRY_CAST(epoch AS BIGINT) * 1000000) AS ts FROM ({rows}))
        WHERE customer IS NOT NULL AND identifier IS NOT NULL AND ts IS NOT NULL
    ) n
    ANTI JOIN usage_events e ON e.customer = n.customer AND e.identifier = n.identifier
"""


def _keys(client, bucket: str, prefix: str, suffix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", []) if obj["Key"].endswith(suffix)]
    return sorted(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--format", choices=("csv", "jsonl"), required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()

    client = boto3.client("s3", endpoint_url=args.endpoint)
    keys = _keys(client, args.bucket, args.prefix, f".{args.format}")
    rows_sql = CSV_ROWS if args.format == "csv" else JSONL_ROWS
    insert = INSERT.format(rows=rows_sql)
    get_s = write_s = 0.0
    started = time.perf_counter()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    con = duckdb.connect(args.db)
    try:
        con.execute(CREATE)
        with tempfile.TemporaryDirectory(dir=shm) as folder:
            path = str(Path(folder) / f"file.{args.format}")
            for key in keys:
                t0 = time.perf_counter()
                data = client.get_object(Bucket=args.bucket, Key=key)["Body"].read()
                t1 = time.perf_counter()
                Path(path).write_bytes(data)
                con.begin()
                con.execute(insert, {"path": path, "file": key})
                con.commit()
                write_s += time.perf_counter() - t1
                get_s += t1 - t0
        stored = con.execute("SELECT count(*) FROM usage_events").fetchone()[0]
    finally:
        con.close()
    print(
        json.dumps(
            {
                "files": len(keys),
                "rows_stored": stored,
                "seconds": time.perf_counter() - started,
                "phases": {"S3 GET": get_s, "read + dedup + insert + commit": write_s},
            }
        )
    )


if __name__ == "__main__":
    main()
