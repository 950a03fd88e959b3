"""`usage-pipeline bench` runs through, tiny: the floor / ingest part on the lake and one end-to-end
workload (a real `usage-pipeline ingest` process), printed as markdown tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_prints_the_tables(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_") and k != "DAGSTER_HOME"}
    command = [
        sys.executable,
        "-m",
        "usage_pipeline.cli",
        "bench",
        "--quick",
        "--skip-peers",
        "--skip-native",
        "--skip-history",
        "--files",
        "2",
        "--workloads",
        "10x1M-csv",
        "--scale",
        "0.002",  # 10 files x 2,000 events
        "--workdir",
        str(tmp_path / "bench"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "| 2 × 50k Stripe CSV " in out  # the floor / ingest step table
    assert "| ingest ÷ floor (time) " in out
    e2e = next(line for line in out.splitlines() if line.startswith("| 10 × 2k CSV ") and "/s (" in line)
    assert "20,000" in e2e and "met" in e2e  # events; ratio with its verdict
    assert "### By rows per file" in out
    assert "### Where the end-to-end time goes" in out
    assert "### Peers" not in out
    assert not (tmp_path / "bench").exists()  # the stores are dropped after the run
