"""Peak memory of parse_file on hostile files: gzip bombs (named .csv.gz, named .csv, nested) and a file of
millions of rejected rows, each parsed in a fresh process, as the growth of its peak RSS.

    .venv/bin/python bench/bomb_memory.py                 # 1 GB bombs against a 10 MiB limit, 2M rejects
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
    args = parser.parse_args()
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
