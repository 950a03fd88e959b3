"""The real path: files on the S3 server -> `usage-pipeline ingest` -> `usage-pipeline close` -> invoices;
then a late file -> the late_usage check fires -> re-close bills it under the same invoice id."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from usage_pipeline.core.storage.lake import read_only
from usage_pipeline.settings import lake_of
from usage_pipeline_tests.conftest import put

pytestmark = pytest.mark.slow

CATALOG = """
meters:
  - {id: api_calls, event_name: api_call, aggregation: count}
  - {id: tokens, event_name: llm_tokens, aggregation: sum}
prices:
  - {id: base, currency: USD, model: flat_fee, amount: "2.00"}
  - {id: calls, meter: api_calls, currency: USD, model: per_unit, unit_amount: "0.10"}
  - id: toks
    meter: tokens
    currency: USD
    model: tiered
    tiers:
      - {up_to: 100, unit_amount: "0.01"}
      - {up_to: null, unit_amount: "0.005", flat_amount: "1"}
subscriptions:
  - id: sub_e2e
    customer_id: cus_e2e
    currency: USD
    price_ids: [base, calls, toks]
    started_at: "2026-01-01T00:00:00Z"
    billing_period_unit: day
"""


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "usage_pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def stripe_rows(prefix: str, n: int, event_name: str, ts: int, value: int) -> list[str]:
    return [f"{prefix}{i},{ts + i},{event_name},cus_e2e,{value}" for i in range(n)]


def csv(rows: list[str]) -> str:
    return (
        "identifier,timestamp,event_name,payload_stripe_customer_id,payload_value\n" + "\n".join(rows) + "\n"
    )


def test_ingest_close_late_file_reclose(settings, s3, bucket, tmp_path: Path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    home = tmp_path / "home"
    env = os.environ.copy()
    env.update(
        DAGSTER_HOME=str(home),
        USAGE_BUCKET=bucket,
        USAGE_LAKE=settings.lake,
        USAGE_LAKE_DATA=settings.lake_data,
        USAGE_CATALOG_PATH=str(catalog),
        AWS_ENDPOINT_URL_S3=str(settings.s3_endpoint_url),
    )
    now = datetime.now(UTC)
    today = now.date()
    yesterday_noon = int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp()) - 12 * 3600
    put(
        s3,
        bucket,
        "incoming/day1.csv",
        csv(
            stripe_rows("c", 30, "api_call", yesterday_noon, 1)
            + stripe_rows("t", 3, "llm_tokens", yesterday_noon, 50)
        ),
    )
    ingest = cli(env, "ingest")
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    close = cli(env, "close", "--date", today.isoformat())
    assert close.returncode == 0, close.stderr[-2000:]

    period_end = datetime(today.year, today.month, today.day)
    invoice_id = (
        "inv_" + hashlib.sha256(f"sub_e2e|{period_end:%Y-%m-%dT%H:%M:%S.%f}Z".encode()).hexdigest()[:20]
    )
    assert invoice_id in close.stdout

    def invoice_state():
        with read_only(lake_of(settings)) as conn:
            invoices = conn.execute("SELECT invoice_id, total FROM pending_invoices").fetchall()
            lines = conn.execute(
                "SELECT price_id, quantity, amount FROM invoice_line_items ORDER BY price_id"
            ).fetchall()
            lineage = conn.execute(
                "SELECT source_file, count(*) FROM line_item_events WHERE price_id = 'calls' GROUP BY ALL"
            ).fetchall()
        return invoices, lines, dict(lineage)

    invoices, lines, lineage = invoice_state()
    # 30 calls x 0.10 = 3.00; 150 tokens tiered: 100 x 0.01 + 50 x 0.005 + 1 = 2.25; flat 2.00
    assert invoices == [(invoice_id, Decimal("7.25"))]
    assert [(p, a) for p, _, a in lines] == [
        ("base", Decimal("2.00")),
        ("calls", Decimal("3.00")),
        ("toks", Decimal("2.25")),
    ]
    assert lineage == {"incoming/day1.csv": 30}

    # A late file for the closed day: stored, reported by late_usage, not billed until re-closed.
    put(s3, bucket, "incoming/late.csv", csv(stripe_rows("late", 10, "api_call", yesterday_noon, 1)))
    ingest = cli(env, "ingest")
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    assert invoice_state()[0] == [(invoice_id, Decimal("7.25"))]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_records_for_run(
            instance.get_runs(limit=1)[0].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        late = [
            r.event_log_entry.dagster_event.event_specific_data
            for r in records
            if r.event_log_entry.dagster_event.event_specific_data.check_name == "late_usage"
        ]
    assert len(late) == 1 and late[0].passed is False
    assert late[0].metadata["late_events"].value == 10
    assert late[0].metadata["at_stake:USD"].value == "1.00 USD"  # 10 more calls x 0.10

    close = cli(env, "close", "--date", today.isoformat())
    assert close.returncode == 0, close.stderr[-2000:]
    invoices, lines, lineage = invoice_state()
    assert invoices == [(invoice_id, Decimal("8.25"))]  # same id, the late calls billed
    assert [p for p, _, _ in lines] == ["base", "calls", "toks"]  # regenerated, not duplicated
    assert lineage == {"incoming/day1.csv": 30, "incoming/late.csv": 10}
    # The re-close run evaluated late_usage after billing: the check is green again, without an ingest.
    late_check = dg.AssetCheckKey(dg.AssetKey("usage_events"), "late_usage")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        reclose_run = instance.get_runs(dg.RunsFilter(job_name="period_close"), limit=1)[0]
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([late_check])[late_check]
        assert reclose_run.run_id in close.stdout
        assert latest.run_id == reclose_run.run_id
        assert latest.event.dagster_event.event_specific_data.passed is True


def test_close_refuses_a_broken_catalog_and_bad_dates(settings, tmp_path: Path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.replace("model: per_unit", "model: per_unicorn"))
    env = os.environ.copy()
    env.update(
        DAGSTER_HOME=str(tmp_path / "home"),
        USAGE_LAKE=settings.lake,
        USAGE_LAKE_DATA=settings.lake_data,
        USAGE_CATALOG_PATH=str(catalog),
    )
    broken = cli(env, "close", "--date", (datetime.now(UTC) - timedelta(days=1)).date().isoformat())
    assert broken.returncode == 2
    assert "calls" in broken.stderr and "model" in broken.stderr
    assert not lake_of(settings).exists()  # nothing was closed, not even opened
    assert cli(env, "close", "--date", "2026-13-40").returncode == 2
    assert cli(env, "close", "--date", "1999-01-01").returncode == 2
