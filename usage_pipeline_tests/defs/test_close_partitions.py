"""Where the period-close partitions start: USAGE_CLOSE_START, else the catalog's earliest subscription."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from usage_pipeline.definitions import build_definitions
from usage_pipeline.defs.partitions import FALLBACK_CLOSE_START, close_partitions_for, close_start
from usage_pipeline.settings import load_settings

CATALOG = """
meters:
  - {id: api_calls, event_name: api_call, aggregation: count}
prices:
  - {id: api, meter: api_calls, currency: USD, model: per_unit, unit_amount: "0.50"}
subscriptions:
  - {id: sub_late, customer_id: cus_a, currency: USD, price_ids: [api],
     started_at: "2026-02-01T00:00:00Z", billing_period_unit: month}
  # 23:30 at UTC-05:00 is 04:30 UTC the next day: the start is the UTC day.
  - {id: sub_early, customer_id: cus_b, currency: USD, price_ids: [api],
     started_at: "2025-06-02T23:30:00-05:00", billing_period_unit: month}
"""
CLOSE_KEYS = ("meter_usage", "usage_exceptions", "metered_events", "invoice_line_items", "pending_invoices")


def _catalog(tmp_path: Path, text: str = CATALOG) -> str:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return str(path)


def _starts(defs: dg.Definitions) -> set[str]:
    """The first partition of every close asset and of the period_close job."""
    graph = defs.resolve_asset_graph()
    definitions = [graph.get(dg.AssetKey(key)).partitions_def for key in CLOSE_KEYS]
    definitions.append(defs.resolve_job_def("period_close").partitions_def)
    assert all(isinstance(d, dg.DailyPartitionsDefinition) for d in definitions)
    return {d.get_first_partition_key() for d in definitions}  # type: ignore[union-attr]


def test_the_partitions_start_on_the_earliest_subscription_start(tmp_path: Path) -> None:
    settings = load_settings({"USAGE_CATALOG_PATH": _catalog(tmp_path)})
    assert close_start(settings) == date(2025, 6, 3)
    assert _starts(build_definitions(settings)) == {"2025-06-03"}


def test_the_close_start_setting_wins(tmp_path: Path) -> None:
    settings = load_settings({"USAGE_CATALOG_PATH": _catalog(tmp_path), "USAGE_CLOSE_START": "2024-01-01"})
    assert _starts(build_definitions(settings)) == {"2024-01-01"}
    assert close_partitions_for(settings).get_first_partition_key() == "2024-01-01"


@pytest.mark.parametrize(
    ("environ", "start"),
    [({}, FALLBACK_CLOSE_START.isoformat()), ({"USAGE_CLOSE_START": "2025-03-01"}, "2025-03-01")],
)
def test_a_broken_catalog_still_loads_the_definitions(
    tmp_path: Path, instance: dg.DagsterInstance, environ: dict[str, str], start: str
) -> None:
    broken = _catalog(tmp_path, CATALOG.replace("price_ids: [api]", "price_ids: [nope]"))
    settings = load_settings(
        {"USAGE_CATALOG_PATH": broken, "USAGE_LAKE": f"sqlite:{tmp_path / 'usage.sqlite'}", **environ}
    )
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    assert _starts(defs) == {start}

    # The error shows where a person looks: in the failed close run.
    result = defs.resolve_job_def("period_close").execute_in_process(
        partition_key=start, instance=instance, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "unknown price 'nope'" in str(failure.event_specific_data)


def test_a_missing_catalog_still_loads_the_definitions(tmp_path: Path) -> None:
    settings = load_settings({"USAGE_CATALOG_PATH": str(tmp_path / "absent.yaml")})
    dg.Definitions.validate_loadable(build_definitions(settings))
    assert close_start(settings) == FALLBACK_CLOSE_START
