"""`usage-pipeline close --date D`: validate, materialize the period-close partition D, print its invoices;
with --dry-run, print what closing D would change on each invoice instead, writing nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import click
import dagster as dg
import duckdb

from usage_pipeline.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from usage_pipeline.cli.launch import launch_in_process
from usage_pipeline.core.billing import sql
from usage_pipeline.core.billing.close import ClosePreview, preview_close
from usage_pipeline.core.billing.money import format_money
from usage_pipeline.core.billing.revisions import InvoiceRevision, LineChange
from usage_pipeline.core.catalog.model import Catalog
from usage_pipeline.core.storage.lake import connect, read_only
from usage_pipeline.core.storage.schema import ensure_schema
from usage_pipeline.core.text import plural
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


def checked_close(settings: Settings, text: str) -> tuple[date, Catalog] | None:
    """The close date of `--date TEXT` and the catalog, or None once the refusal is printed: a bad date,
    a broken catalog (checked first: the close partitions start at its earliest subscription), a date
    outside the partitions."""
    from usage_pipeline.core.catalog.model import CatalogError, load_catalog
    from usage_pipeline.defs.partitions import close_partitions_for

    try:
        day = parse_close_date(text)
    except click.BadParameter as exc:
        click.echo(f"close: {exc.message}", err=True)
        return None
    try:
        catalog = load_catalog(settings.catalog_path)
    except CatalogError as exc:
        click.echo(
            f"close: the catalog {settings.catalog_path} is invalid; nothing was closed:\n{exc}", err=True
        )
        return None
    keys = close_partitions_for(settings).get_partition_keys(current_time=datetime.now(UTC))
    if day.isoformat() not in keys:
        click.echo(f"close: {day} is outside the close partitions ({keys[0]} … {keys[-1]})", err=True)
        return None
    return day, catalog


def run_close_command(settings: Settings, text: str) -> int:
    from usage_pipeline.cli.instance import get_instance
    from usage_pipeline.definitions import build_definitions
    from usage_pipeline.defs.ingest.sensors import fail_dead_runs

    checked = checked_close(settings, text)
    if checked is None:
        return EXIT_USAGE
    day, _ = checked
    # The lake is opened (and created when new) before any run exists: a misconfigured or unreachable
    # lake is one line and exit 2, not a failed run.
    with connect(lake_of(settings)):
        pass
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


def run_dry_run_command(settings: Settings, text: str) -> int:
    """`close --date D --dry-run`: partition D computed from the lake as a close would now, compared with
    what is stored, printed per invoice; no run is started, nothing is written."""
    checked = checked_close(settings, text)
    if checked is None:
        return EXIT_USAGE
    day, catalog = checked
    with read_only(lake_of(settings)) as conn:
        if conn is None:
            # Never written: a close would start from the empty tables.
            with duckdb.connect(":memory:") as empty:
                ensure_schema(empty)
                preview = preview_close(empty, catalog, day)
        else:
            preview = preview_close(conn, catalog, day)
    print_preview(preview)
    return EXIT_OK


def _quantity(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.normalize():f}"


def _money(value: Decimal | None, currency: str) -> str:
    return "-" if value is None else format_money(value, currency)


def _signed_money(value: Decimal, currency: str) -> str:
    return ("-" if value < 0 else "+") + format_money(abs(value), currency)


def _revision_head(r: InvoiceRevision) -> str:
    if r.total_before is None:
        what = f"new invoice: {_money(r.total_after, r.currency)}"
    elif r.total_after is None:
        what = f"removed: {_money(r.total_before, r.currency)} → no invoice"
    else:
        what = (
            f"{_money(r.total_before, r.currency)} → {_money(r.total_after, r.currency)} "
            f"({_signed_money(r.difference, r.currency)})"
        )
    return f"{r.invoice_id:<26} {r.subscription_id:<18} revision {r.revision}: {what}"


def _line_text(line: LineChange, currency: str) -> str:
    quantity = f"{_quantity(line.old_quantity)} → {_quantity(line.new_quantity)}"
    amount = f"{_money(line.old_amount, currency)} → {_money(line.new_amount, currency)}"
    return f"    {line.change:<8} {line.price_id:<20} quantity {quantity:<30} amount {amount}"


def print_preview(preview: ClosePreview) -> None:
    """Per invoice, what re-closing the date would change, then one summary line."""
    read = "an empty lake" if preview.snapshot_id is None else f"lake snapshot {preview.snapshot_id}"
    click.echo(f"dry run: close {preview.close_date} computed from {read}; nothing is written")
    revisions = preview.revisions
    for r in revisions:
        click.echo(_revision_head(r))
        for line in r.changes:
            click.echo(_line_text(line, r.currency))
    waiting = (
        f"; {plural(preview.periods_not_over, 'period')} ending on {preview.close_date} not over yet"
        if preview.periods_not_over
        else ""
    )
    if not revisions:
        click.echo(
            f"nothing to change: a close of {preview.close_date} would give back the stored "
            f"{plural(preview.invoices, 'invoice')} ({plural(preview.lines, 'line')}) as they are{waiting}"
        )
        return
    differences: dict[str, Decimal] = {}
    for r in revisions:
        differences[r.currency] = differences.get(r.currency, Decimal(0)) + r.difference
    new = sum(r.total_before is None for r in revisions)
    removed = sum(r.total_after is None for r in revisions)
    money = ", ".join(f"{c} {_signed_money(d, c)}" for c, d in sorted(differences.items()))
    click.echo(
        f"summary: {plural(len(revisions), 'invoice')} would change ({new} new, {removed} removed, "
        f"{len(revisions) - new - removed} revised): "
        f"lines {sum(r.lines_added for r in revisions)} added, {sum(r.lines_removed for r in revisions)} "
        f"removed, {sum(r.lines_changed for r in revisions)} changed; totals {money}{waiting}"
    )
