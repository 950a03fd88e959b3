"""`usage-pipeline close --date D --dry-run`: per invoice, what a re-close would change; nothing written."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner, Result

from usage_pipeline.cli.main import main
from usage_pipeline.core.billing.close import close_billing
from usage_pipeline.core.catalog.model import load_catalog
from usage_pipeline.core.metering.meter import close_metering
from usage_pipeline.core.storage.lake import LAKE_ALIAS, Lake, connect
from usage_pipeline.settings import Settings, lake_of
from usage_pipeline_tests.conftest import lake_rows
from usage_pipeline_tests.core.test_metering import stripe

CLOSE = date(2026, 3, 2)  # the daily periods [03-01, 03-02) end on it
CATALOG = """
meters:
  - {id: calls, event_name: api_call, aggregation: count}
prices:
  - {id: base, currency: USD, model: flat_fee, amount: "49.00"}
  - {id: calls_pkg, meter: calls, currency: USD, model: package, package_size: "10", package_amount: "100"}
subscriptions:
  - id: sub_a
    customer_id: cus_a
    currency: USD
    price_ids: [base, calls_pkg]
    started_at: "2026-01-01T00:00:00Z"
    billing_period_unit: day
  - id: sub_b
    customer_id: cus_b
    currency: USD
    price_ids: [base, calls_pkg]
    started_at: "2026-01-01T00:00:00Z"
    billing_period_unit: day
"""


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    return {
        "USAGE_LAKE": settings.lake,
        "USAGE_LAKE_DATA": settings.lake_data,
        "USAGE_CATALOG_PATH": str(catalog),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),  # never created: no run, no instance
    }


def dry_run(env: dict[str, str], day: str = CLOSE.isoformat()) -> Result:
    return CliRunner().invoke(main, ["close", "--date", day, "--dry-run"], env=env)


def calls(conn: duckdb.DuckDBPyConnection, customer: str, n: int, hour: int) -> None:
    for minute in range(n):
        stripe(conn, "api_call", customer, f"2026-03-01 {hour:02d}:{minute:02d}:00")


def close(lake: Lake, env: dict[str, str]) -> None:
    """A real close of CLOSE (the metering asset, then the billing asset), without Dagster."""
    catalog = load_catalog(env["USAGE_CATALOG_PATH"])
    now = datetime(2026, 3, 3, tzinfo=UTC)
    with connect(lake) as conn:
        close_metering(conn, catalog, CLOSE, now=now)
        close_billing(conn, catalog, CLOSE, now=now)


def latest_snapshot(settings: Settings) -> int:
    return lake_rows(settings, f"SELECT max(snapshot_id) FROM {LAKE_ALIAS}.snapshots()")[0][0]


def test_dry_run_prints_the_diff_and_writes_nothing(settings: Settings, env: dict[str, str]) -> None:
    lake = lake_of(settings)
    # A lake never written: the close would start from nothing (the flat fees bill anyway).
    first = dry_run(env)
    assert first.exit_code == 0, first.output
    assert "computed from an empty lake" in first.output
    assert first.output.count("revision 1: new invoice: 49.00 USD") == 2
    assert "summary: 2 invoices would change (2 new, 0 removed, 0 revised)" in first.output
    assert not lake.exists()  # not even the catalog file

    with connect(lake) as conn:
        calls(conn, "cus_a", 21, hour=10)
    close(lake, env)
    with connect(lake) as conn:
        calls(conn, "cus_a", 10, hour=20)  # 21 -> 31 calls: 3 -> 4 packages
        calls(conn, "cus_b", 1, hour=21)  # sub_b's first metered line
    snapshot = latest_snapshot(settings)
    stored = lake_rows(settings, "SELECT invoice_id, total FROM pending_invoices ORDER BY 1")

    result = dry_run(env)

    assert result.exit_code == 0, result.output
    out = result.output
    assert f"dry run: close {CLOSE} computed from lake snapshot {snapshot}; nothing is written" in out
    assert "revision 2: 349.00 USD → 449.00 USD (+100.00 USD)" in out
    assert "revision 2: 49.00 USD → 149.00 USD (+100.00 USD)" in out
    changed = next(line for line in out.splitlines() if line.strip().startswith("changed"))
    assert "calls_pkg" in changed
    assert "quantity 21 → 31" in changed and "amount 300.00 USD → 400.00 USD" in changed
    added = next(line for line in out.splitlines() if line.strip().startswith("added"))
    assert "calls_pkg" in added and "quantity - → 1" in added and "amount - → 100.00 USD" in added
    assert (
        "summary: 2 invoices would change (0 new, 0 removed, 2 revised): "
        "lines 1 added, 0 removed, 1 changed; totals USD +200.00 USD"
    ) in out
    # Nothing written: no new lake snapshot, the stored invoices as they were, no Dagster run.
    assert latest_snapshot(settings) == snapshot
    assert lake_rows(settings, "SELECT invoice_id, total FROM pending_invoices ORDER BY 1") == stored
    assert lake_rows(settings, "SELECT count(*) FROM invoice_revisions") == [(2,)]
    assert not Path(env["DAGSTER_HOME"]).exists()

    close(lake, env)
    again = dry_run(env)
    assert again.exit_code == 0, again.output
    assert "nothing to change: a close of 2026-03-02 would give back the stored 2 invoices (4 lines)" in (
        again.output
    )


def test_dry_run_refuses_a_bad_date(env: dict[str, str]) -> None:
    bad = dry_run(env, "2026-13-40")
    assert bad.exit_code == 2
    assert "--date wants YYYY-MM-DD" in bad.output
