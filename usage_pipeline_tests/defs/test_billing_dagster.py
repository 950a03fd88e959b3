"""The period_close job run through Dagster (test instance, temporary DuckDB and catalog) and its schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from usage_pipeline.core.storage.lake import connect, open_lake
from usage_pipeline.definitions import build_definitions
from usage_pipeline.defs.billing.schedules import build_period_close_schedule, close_cron
from usage_pipeline.settings import Settings, lake_of

CATALOG = """
meters:
  - {id: api_calls, event_name: api_call, aggregation: count}
  - {id: storage_gb, filters: {feature: storage}, aggregation: max, value_property: gb}
prices:
  - {id: base, currency: USD, model: flat_fee, amount: "10.00"}
  - {id: api, meter: api_calls, currency: USD, model: per_unit, unit_amount: "0.50"}
  - {id: storage, meter: storage_gb, currency: USD, model: per_unit, unit_amount: "2"}
subscriptions:
  - {id: sub_s, customer_id: cus_s, currency: USD, price_ids: [base, api],
     started_at: "2026-01-01T00:00:00Z", billing_period_unit: day}
  - {id: sub_c, customer_id: cus_c, currency: USD, price_ids: [storage],
     started_at: "2026-01-01T00:00:00Z", billing_period_unit: day}
"""


def _settings(tmp_path: Path, catalog_text: str = CATALOG, grace: str = "PT1H") -> Settings:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(catalog_text)
    return Settings(
        catalog_path=str(catalog),
        lake=f"sqlite:{tmp_path / 'usage.sqlite'}",
        lake_data=str(tmp_path / "lake"),
        close_grace=grace,
    )


def _definitions(settings: Settings) -> dg.Definitions:
    return build_definitions(settings)


def _store_events(settings: Settings) -> None:
    conn = open_lake(lake_of(settings))
    rows = [
        ("e1", "stripe", "api_call", "cus_s", None, "2026-03-01 08:00:00", {}, 1),
        ("e2", "stripe", "api_call", "cus_s", None, "2026-03-01 09:00:00", {}, 2),
        ("e3", "chargebee", None, None, "sub_c", "2026-03-01 10:00:00", {"feature": "storage", "gb": 7}, 3),
        ("e4", "stripe", "unknown_event", "cus_s", None, "2026-03-01 11:00:00", {}, 4),
    ]
    for event_id, layout, name, customer, sub, ts, props, row in rows:
        conn.execute(
            "INSERT INTO usage_events VALUES (?, ?, ?, ?, ?, ?, ?, 'incoming/a.csv', 'etag1', ?, ?)",
            [event_id, layout, name, customer, sub, ts, json.dumps(props), row, datetime(2026, 3, 1, 12)],
        )
    conn.close()


def test_period_close_job_closes_a_partition(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    settings = _settings(tmp_path)
    _store_events(settings)
    job = _definitions(settings).resolve_job_def("period_close")

    result = job.execute_in_process(partition_key="2026-03-02", instance=instance)

    assert result.success
    with connect(lake_of(settings)) as conn:
        invoices = conn.execute(
            "SELECT subscription_id, total, line_count FROM pending_invoices ORDER BY 1"
        ).fetchall()
        codes = conn.execute("SELECT code FROM usage_exceptions").fetchall()
        published = conn.execute("SELECT count(*) FROM subscriptions").fetchall()[0][0]
    assert invoices == [("sub_c", Decimal("14.0000"), 1), ("sub_s", Decimal("11.0000"), 2)]
    assert codes == [("no_meter",)]
    assert published == 2
    checks = {
        e.check_name: e
        for e in result.get_asset_check_evaluations()  # type: ignore[attr-defined]
    }
    assert checks["invoice_totals_match_lines"].passed
    assert checks["no_line_without_events"].passed
    assert not checks["usage_exceptions_found"].passed
    assert checks["usage_exceptions_found"].severity == dg.AssetCheckSeverity.WARN
    billed = result.asset_materializations_for_node("billing")
    assert billed[0].metadata["invoices"].value == 2
    assert billed[0].metadata["total:USD"].value == "25.00 USD"

    # Running the partition again regenerates: same invoices, no duplicates.
    again = job.execute_in_process(partition_key="2026-03-02", instance=instance)
    assert again.success
    with connect(lake_of(settings)) as conn:
        assert conn.execute("SELECT count(*) FROM pending_invoices").fetchall()[0][0] == 2
        assert conn.execute("SELECT count(*) FROM invoice_line_items").fetchall()[0][0] == 3


def test_close_metadata_shows_amounts_in_the_currency_minor_unit(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    catalog = """
meters:
  - {id: api_calls, event_name: api_call, aggregation: count}
  - {id: storage_gb, filters: {feature: storage}, aggregation: max, value_property: gb}
prices:
  - {id: base, currency: JPY, model: flat_fee, amount: "200"}
  - {id: api, meter: api_calls, currency: JPY, model: per_unit, unit_amount: "0.75"}
  - {id: storage, meter: storage_gb, currency: BHD, model: per_unit, unit_amount: "0.0005"}
subscriptions:
  - {id: sub_s, customer_id: cus_s, currency: JPY, price_ids: [base, api],
     started_at: "2026-01-01T00:00:00Z", billing_period_unit: day}
  - {id: sub_c, customer_id: cus_c, currency: BHD, price_ids: [storage],
     started_at: "2026-01-01T00:00:00Z", billing_period_unit: day}
"""
    settings = _settings(tmp_path, catalog)
    _store_events(settings)

    result = (
        _definitions(settings)
        .resolve_job_def("period_close")
        .execute_in_process(partition_key="2026-03-02", instance=instance)
    )

    assert result.success
    for materialization in result.asset_materializations_for_node("billing"):
        metadata = materialization.metadata
        # Lines rounded half-up: 200 JPY + 2 x 0.75 = 1.5 -> 2 JPY; 7 GB x 0.0005 = 0.0035 -> 0.004 BHD.
        assert metadata["total:JPY"].value == "202 JPY"
        assert metadata["total:BHD"].value == "0.004 BHD"
        table = metadata["totals"].records  # type: ignore[attr-defined]
        totals = {record.data["currency"]: record.data["total"] for record in table}
        assert totals == {"BHD": "0.004 BHD", "JPY": "202 JPY"}


def test_broken_catalog_fails_the_close_and_writes_nothing(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    settings = _settings(tmp_path, CATALOG.replace("price_ids: [storage]", "price_ids: [nope]"))
    _store_events(settings)
    job = _definitions(settings).resolve_job_def("period_close")

    result = job.execute_in_process(partition_key="2026-03-02", instance=instance, raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "unknown price 'nope'" in str(failure.event_specific_data)
    with connect(lake_of(settings)) as conn:
        assert conn.execute("SELECT count(*) FROM pending_invoices").fetchall()[0][0] == 0
        assert conn.execute("SELECT count(*) FROM closed_periods").fetchall()[0][0] == 0


def test_late_usage_check_reports_money_at_stake(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    settings = _settings(tmp_path)
    _store_events(settings)
    defs = _definitions(settings)
    assert (
        defs.resolve_job_def("period_close")
        .execute_in_process(partition_key="2026-03-02", instance=instance)
        .success
    )
    with connect(lake_of(settings)) as conn:
        conn.execute(
            "INSERT INTO usage_events VALUES ('late', 'stripe', 'api_call', 'cus_s', NULL, "
            "'2026-03-01 23:59:00', '{}', 'incoming/late.csv', 'etag2', 1, ?)",
            [datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=1)],
        )
    late_check = dg.AssetCheckKey(dg.AssetKey("usage_events"), "late_usage")
    job = dg.define_asset_job("check_late", selection=dg.AssetSelection.checks(late_check))
    result = (
        dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
        .resolve_job_def("check_late")
        .execute_in_process(instance=instance)
    )

    (evaluation,) = result.get_asset_check_evaluations()  # type: ignore[attr-defined]
    assert evaluation.check_name == "late_usage"
    assert not evaluation.passed
    assert evaluation.metadata["late_events"].value == 1
    assert evaluation.metadata["at_stake:USD"].value == "0.50 USD"  # in the currency's minor unit
    late_periods = evaluation.metadata["late_periods"]
    assert [record.data["subscription"] for record in late_periods.records] == ["sub_s"]


def test_reclosing_the_late_date_turns_late_usage_green_in_the_close_run(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    settings = _settings(tmp_path)
    _store_events(settings)
    close = _definitions(settings).resolve_job_def("period_close")
    late_check = dg.AssetCheckKey(dg.AssetKey("usage_events"), "late_usage")

    def late_usage_of(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
        (evaluation,) = [
            e
            for e in result.get_asset_check_evaluations()  # type: ignore[attr-defined]
            if e.asset_check_key == late_check
        ]
        return evaluation

    first = close.execute_in_process(partition_key="2026-03-02", instance=instance)
    assert first.success and late_usage_of(first).passed  # the close evaluates late_usage too
    with connect(lake_of(settings)) as conn:
        conn.execute(
            "INSERT INTO usage_events VALUES ('late', 'stripe', 'api_call', 'cus_s', NULL, "
            "'2026-03-01 23:59:00', '{}', 'incoming/late.csv', 'etag2', 1, ?)",
            [datetime.now(UTC).replace(tzinfo=None)],  # after the first close, before the re-close
        )
    # Closing another date re-evaluates the check: the late event is still unbilled, so it stays red.
    other = close.execute_in_process(partition_key="2026-03-03", instance=instance)
    red = late_usage_of(other)
    assert not red.passed
    assert red.metadata["close_dates_to_reclose"].value == "2026-03-02"

    reclose = close.execute_in_process(partition_key="2026-03-02", instance=instance)

    assert reclose.success
    # The billing step ran before the check in the same run, so its evaluation already sees the re-close.
    steps = [e.step_key for e in reclose.all_events if e.is_step_success]
    assert steps.index("billing") < steps.index("usage_events_late_usage")
    green = late_usage_of(reclose)
    assert green.passed
    assert green.metadata["late_events"].value == 0
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([late_check])[late_check]
    assert latest.run_id == reclose.run_id
    assert latest.status == AssetCheckExecutionRecordStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("grace", "cron"),
    [("PT1H", "0 1 * * *"), ("0", "0 0 * * *"), ("PT90S", "2 0 * * *"), ("PT23H59M", "59 23 * * *")],
)
def test_schedule_cron_follows_the_grace(grace: str, cron: str, tmp_path: Path) -> None:
    defs = _definitions(_settings(tmp_path, grace=grace))
    schedule = defs.resolve_schedule_def("period_close_schedule")
    assert schedule.cron_schedule == cron
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize(
    ("grace", "tick", "closes"),
    [
        (timedelta(hours=1), datetime(2026, 3, 2, 1, 0, tzinfo=UTC), "2026-03-01"),
        (timedelta(0), datetime(2026, 3, 2, 0, 0, tzinfo=UTC), "2026-03-01"),
        (timedelta(hours=23, minutes=30), datetime(2026, 3, 2, 23, 30, tzinfo=UTC), "2026-03-01"),
    ],
)
def test_schedule_tick_closes_the_day_that_ended(grace: timedelta, tick: datetime, closes: str) -> None:
    schedule = build_period_close_schedule(grace)
    request = schedule(dg.build_schedule_context(scheduled_execution_time=tick))
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == closes


def test_grace_of_a_day_or_more_is_refused() -> None:
    with pytest.raises(ValueError, match="USAGE_CLOSE_GRACE"):
        close_cron(timedelta(hours=24))
