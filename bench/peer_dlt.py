"""A peer of the product's ingest for `usage-pipeline bench --peers`: dlt's filesystem source into DuckDB.

    bench/out/peer-venv/bin/python bench/peer_dlt.py --endpoint http://127.0.0.1:PORT --bucket B \\
        --prefix P/ --format csv|jsonl --out FOLDER

Runs in its own virtual environment (`usage-pipeline bench --peers` creates it under the bench's work
folder with `dlt[duckdb,filesystem,s3,parquet]` and the product's DuckDB version; dlt is no dependency of
the product). Nothing of the product is imported.

What a dlt user would write: the `filesystem` source over s3://BUCKET/PREFIX (s3fs; the local endpoint and
dummy keys), piped into dlt's CSV reader on DuckDB (`read_csv_duckdb`, Arrow batches of 100,000 rows
rather than its default 5,000, a little faster; every column as text: the files hold a few bad rows that
would break inferred types) or, for JSON Lines, dlt's `read_jsonl` logic (orjson, chunks of Python dicts)
over the whole file's bytes: the stock `read_jsonl` iterates the lines of an s3fs file, whose read-ahead
cache copies its whole block per line (quadratic: ~1 ms a line on a 24 MB file, hours for 10M events).
Then extract, normalize and load (what `pipeline.run` does, timed apart) into a DuckDB file with write
disposition `append`: no validation, no deduplication (a `merge` on the dedup key would be the
like-for-like setting, and slower). The load files are Parquet (`--loader-file-format`; for Python dicts
4x faster to load than dlt's default INSERT statements). Telemetry is off; the pipeline's working folder
is under --out, so every run starts fresh.

Prints one JSON object on stdout: the rows loaded and seconds per phase (extract, normalize, load).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# Before dlt is imported: no telemetry, no progress output.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

import dlt
from dlt.common import json as dlt_json
from dlt.sources.credentials import AwsCredentials
from dlt.sources.filesystem import FileItemDict, filesystem, read_csv_duckdb

CSV_CHUNK_ROWS = 100_000
JSONL_CHUNK_ROWS = 10_000


@dlt.transformer(standalone=True)
def read_jsonl_bytes(items: list[FileItemDict], chunksize: int = JSONL_CHUNK_ROWS):
    """dlt's read_jsonl, the file read whole first (see the module's docstring)."""
    for item in items:
        chunk = []
        for line in item.read_bytes().splitlines():
            if line.strip():
                chunk.append(dlt_json.loadb(line))
            if len(chunk) >= chunksize:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--format", choices=("csv", "jsonl"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--chunk-rows", type=int, help="Rows per item the reader yields.")
    parser.add_argument(
        "--loader-file-format", default="parquet", help="dlt's file format between normalize and load."
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    credentials = AwsCredentials(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        endpoint_url=args.endpoint,
    )
    files = filesystem(
        bucket_url=f"s3://{args.bucket}/{args.prefix.rstrip('/')}",
        credentials=credentials,
        file_glob=f"*.{args.format}",
    )
    if args.format == "csv":
        chunk = args.chunk_rows or CSV_CHUNK_ROWS
        reader = files | read_csv_duckdb(chunk_size=chunk, use_pyarrow=True, all_varchar=True)
    else:
        reader = files | read_jsonl_bytes(chunksize=args.chunk_rows or JSONL_CHUNK_ROWS)
    pipeline = dlt.pipeline(
        pipeline_name="usage_peer",
        destination=dlt.destinations.duckdb(str(out / "peer.duckdb")),
        dataset_name="usage",
        pipelines_dir=str(out / "pipelines"),
    )
    phases: dict[str, float] = {}
    started = time.perf_counter()
    pipeline.extract(
        reader.with_name("usage_events"),
        write_disposition="append",
        loader_file_format=args.loader_file_format,
    )
    phases["extract (S3 + read)"] = time.perf_counter() - started
    mark = time.perf_counter()
    pipeline.normalize()
    phases["normalize"] = time.perf_counter() - mark
    mark = time.perf_counter()
    info = pipeline.load()
    phases["load"] = time.perf_counter() - mark
    info.raise_on_failed_jobs()
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM usage_events")[0][0]
    print(json.dumps({"rows_stored": rows, "seconds": time.perf_counter() - started, "phases": phases}))


if __name__ == "__main__":
    main()
