"""`usage-pipeline close --date D`: validate, materialize the period-close partition D, print its invoices."""

from __future__ import annotations

from datetime import UTC, date, datetime

import click
import dagster as dg

from usage_pipeline.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from usage_pipeline.cli.launch import launch_in_process
from usage_pipeline.core.billing import sql
from usage_pipeline.core.billing.money import format_money
from usage_pipeline.core.storage.lake import read_only
from usage_pipeline.settings import Settings, lake_of

CLOSE_JOB_NAME = "period_close"


def parse_close_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"--date wants YYYY-MM-DD, got {text!r}") from exc


def run_close(instance: dg.DagsterInstance, defs: dg.Definitions, day: date) -> dg.JobExecutionResult:
    """Materialize the close partition `day` in this process; the run is recorded in the instance, under
    the period_close job of the code location (see launch.py)."""
    return launch_in_process(instance, defs.resolve_job_def(CLOSE_JOB_NAME), partition_key=day.isoformat())


def invoices_of(settings: Settings, day: date) -> list[tuple]:
    with read_only(lake_of(settings)) as conn:
        if conn is None:
            return []
        return conn.execute(sql.PENDING_INVOICES_OF_DAY, {"day": day}).fetchall()


def print_invoices(rows: list[tuple]) -> None:
    if not rows:
        click.echo("no pending invoices for this date")
        return
    head = (
        f"{'invoice_id':<26} {'subscription':<18} {'customer':<15} {'period (UTC)':<35} {'total':>18} lines"
    )
    click.echo(head)
    for invoice_id, sub, customer, start, end, currency, total, lines in rows:
        period = f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}"
        amount = format_money(total, currency)
        click.echo(f"{invoice_id:<26} {sub:<18} {customer:<15} {period:<35} {amount:>18} {lines:>5}")


def run_close_command(settings: Settings, text: str) -> int:
    from usage_pipeline.cli.instance import get_instance
    from usage_pipeline.core.catalog.model import CatalogError, load_catalog
    from usage_pipeline.definitions import build_definitions
    from usage_pipeline.defs.ingest.sensors import fail_dead_runs
    from usage_pipeline.defs.partitions import close_partitions_for

    try:
        day = parse_close_date(text)
    except click.BadParameter as exc:
        click.echo(f"close: {exc.message}", err=True)
        return EXIT_USAGE
    # The catalog first: the close partitions start at its earliest subscription.
    try:
        load_catalog(settings.catalog_path)
    except CatalogError as exc:
        click.echo(
            f"close: the catalog {settings.catalog_path} is invalid; nothing was closed:\n{exc}", err=True
        )
        return EXIT_USAGE
    keys = close_partitions_for(settings).get_partition_keys(current_time=datetime.now(UTC))
    if day.isoformat() not in keys:
        click.echo(f"close: {day} is outside the close partitions ({keys[0]} … {keys[-1]})", err=True)
        return EXIT_USAGE
    instance = get_instance()
    # A close or ingest killed earlier must not keep the store's pool slot from this one.
    fail_dead_runs(instance)
    result = run_close(instance, build_definitions(settings), day)
    if not result.success:
        click.echo(f"close: run {result.run_id} failed; see the Dagster UI / logs above", err=True)
        return EXIT_FAILED
    click.echo(f"closed {day} (run {result.run_id})")
    print_invoices(invoices_of(settings, day))
    return EXIT_OK
