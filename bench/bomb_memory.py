"""Peak memory of ingesting hostile and big files, each in a fresh process: gzip bombs (named .csv.gz,
named .csv, nested) and a file of millions of rejected rows through parse_file; big usage files (1 GB CSV,
its .csv.gz, 1 GB JSON Lines, 100 MB CSV) through ingest_files into a lake in a temporary folder, read
with read_version from a stand-in S3 client that serves the local file.

    .venv/bin/python bench/bomb_memory.py                 # 1 GB bombs against a 10 MiB limit, 2M rejects
    .venv/bin/python bench/bomb_memory.py --big /tmp/bigf/big.csv /tmp/bigf/big.csv.gz ...
        # peak RSS and events/s of each big file (make them with `usage-pipeline generate`)
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys
from datetime import UTC, datetime
from pathlib import Path
from usage_pipeline.core.ingest.model import FileVersion, ValidationLimits
from usage_pipeline.core.ingest.parse import parse_file
path, fmt, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = Path(path).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
parsed = parse_file(data, FileVersion("bench/" + fmt, "e", len(data), datetime.now(UTC)), fmt,
                    ValidationLimits(max_decompressed_bytes=limit))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": parsed.status, "reason": parsed.failed_reason, "rows": parsed.rows_total,
                  "rejects": len(parsed.rejects), "peak_growth_mb": (after - before) / 1024,
                  "peak_mb": after / 1024}))
"""

# One big file through the whole ingest path: read_version (whole body, or spooled to disk), parse,
# validate, dedup, write to a fresh lake. The stand-in client serves the file as botocore would.
BIG_CHILD = """
import json, resource, sys, tempfile, time
from datetime import UTC, datetime
from pathlib import Path
from botocore.response import StreamingBody
from usage_pipeline.core.ingest.model import FileVersion, ValidationLimits
from usage_pipeline.core.ingest.runner import ingest_files
from usage_pipeline.core.ingest.s3 import read_version
from usage_pipeline.core.storage.lake import Lake, connect

path = Path(sys.argv[1])
chunking = {"chunk_bytes": int(sys.argv[2]) << 20} if len(sys.argv) > 2 else {}
size = path.stat().st_size
arrived = datetime.fromtimestamp(path.stat().st_mtime, UTC)

class Client:
    class exceptions:
        class NoSuchKey(Exception):
            pass
    class meta:
        class config:
            retries = {"total_max_attempts": 3}
    def get_object(self, Bucket, Key):
        return {"Body": StreamingBody(path.open("rb"), size), "ContentLength": size, "ETag": '"e"',
                "LastModified": arrived}

file = FileVersion("bench/" + path.name, "e", size, arrived)
with tempfile.TemporaryDirectory() as folder:
    with connect(Lake(catalog=f"sqlite:{folder}/catalog.sqlite", data_path=f"{folder}/data/")) as conn:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        report = ingest_files([file], fetch=lambda f: read_version(Client(), "bench", f), conn=conn,
                              max_file_bytes=1 << 30, limits=ValidationLimits(), run_id="bench", **chunking)
        seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        after, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
(o,) = report.outcomes
print(json.dumps({"status": o.status, "reason": o.failed_reason, "rows": o.rows_total,
                  "accepted": o.rows_accepted, "duplicate": o.rows_duplicate, "rejected": o.rows_rejected,
                  "seconds": seconds, "cpu_seconds": cpu, "peak_mb": after / 1024,
                  "peak_growth_mb": (after - before) / 1024}))
"""


def big_files(paths: list[str], chunk_mb: int | None) -> None:
    for path in paths:
        result = subprocess.run(
            [sys.executable, "-c", BIG_CHILD, path, *([str(chunk_mb)] if chunk_mb else [])],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            print(f"{Path(path).name}: failed\n{result.stderr[-2000:]}")
            continue
        found = json.loads(result.stdout.strip().splitlines()[-1])
        size = Path(path).stat().st_size
        print(
            f"{Path(path).name:<48} {size / 1e6:8.1f} MB -> {found['status']:<21} "
            f"rows {found['rows']:>11,} (acc {found['accepted']:,} dup {found['duplicate']:,} "
            f"rej {found['rejected']:,})  {found['seconds']:6.1f} s ({found['cpu_seconds']:.0f} CPU-s)  "
            f"{found['rows'] / found['seconds']:>10,.0f} events/s  peak RSS {found['peak_mb']:,.0f} MB",
            flush=True,
        )


def gzip_stream(chunk: bytes, total: int) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as z:
        written = 0
        while written < total:
            z.write(chunk)
            written += len(chunk)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expanded-mb", type=int, default=1024, help="what the bombs expand to")
    parser.add_argument("--limit-mb", type=int, default=10, help="USAGE_MAX_FILE_BYTES for the bombs")
    parser.add_argument("--rejects", type=int, default=2_000_000, help="rows of the all-rejected file")
    parser.add_argument("--big", nargs="+", metavar="FILE", help="ingest these usage files instead")
    parser.add_argument("--chunk-mb", type=int, help="--big: the chunk size (default: the product's)")
    args = parser.parse_args()
    if args.big:
        big_files(args.big, args.chunk_mb)
        return
    line = b"identifier,timestamp,event_name,payload_stripe_customer_id,payload_value\n"
    row = b"evt,not-a-time,api_call,cus_1,1\n"
    bomb = gzip_stream(line + row * 32_768, args.expanded_mb << 20)
    rejects = gzip.compress(line + row * args.rejects, compresslevel=6)
    cases = [
        ("gzip bomb named .csv.gz", bomb, "csv.gz", args.limit_mb << 20),
        ("gzip bomb named .csv", bomb, "csv", args.limit_mb << 20),
        ("gzip inside gzip (.csv.gz)", gzip.compress(bomb), "csv.gz", args.limit_mb << 20),
        (f"{args.rejects:,} rejected rows (.csv.gz)", rejects, "csv.gz", 1 << 40),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name, data, fmt, limit in cases:
            path = Path(folder) / "input"
            path.write_bytes(data)
            result = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), fmt, str(limit)],
                capture_output=True,
                text=True,
                check=True,
            )
            found = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"{name:<32} {len(data) / 1e6:8.2f} MB -> {found['status']:<6} {found['reason'] or '':<15} "
                f"rows {found['rows']:>10,}  peak RSS {found['peak_mb']:,.0f} MB "
                f"(+{found['peak_growth_mb']:,.0f} MB)"
            )


if __name__ == "__main__":
    main()
