"""`usage-pipeline demo`: the whole product on a laptop with no AWS account, in under a minute."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import click

from usage_pipeline.cli.exit_codes import EXIT_FAILED, EXIT_OK
from usage_pipeline.core.billing import sql as billing_sql
from usage_pipeline.core.ingest import sql as ingest_sql
from usage_pipeline.core.ingest.store import FileOutcome, describe_outcome
from usage_pipeline.core.storage.lake import read_only
from usage_pipeline.settings import Settings, lake_of


def _query(settings: Settings, statement: str, parameters: dict[str, object]) -> list[tuple]:
    with read_only(lake_of(settings)) as conn:
        return [] if conn is None else conn.execute(statement, parameters).fetchall()


def _print_files(settings: Settings, versions: list[tuple[str, str]], run_ids: list[str]) -> None:
    """The ledger row of each listed version, in arrival order, and the codes of this ingest's rejects."""
    rows = _query(
        settings,
        ingest_sql.OUTCOMES_OF_VERSIONS,
        {"keys": [k for k, _ in versions], "etags": [e for _, e in versions]},
    )
    for *fields, run_id in rows:
        line = describe_outcome(FileOutcome(*fields), counts_width=50, max_detail=90)
        earlier = "" if run_id in run_ids else "  (same version ingested by an earlier run)"
        click.echo(f"   {line}{earlier}")
    codes = _query(settings, ingest_sql.REJECT_CODES_OF_RUNS, {"runs": run_ids})
    if codes:
        click.echo("   rejected rows by code: " + ", ".join(f"{code} {n}" for code, n in codes))


def _print_lineage(settings: Settings, day: date) -> None:
    """Lineage from an invoice line down to the S3 files and rows behind it (the line_item_events view)."""
    line = _query(settings, billing_sql.FIRST_METERED_LINE, {"day": day})
    if not line:
        return
    line_item_id, invoice_id, price_id, quantity = line[0]
    files = _query(settings, billing_sql.LINE_ITEM_SOURCES, {"id": line_item_id})
    amount = f"{quantity.normalize():f}"
    click.echo(f"\n4. lineage of line {line_item_id} ({invoice_id}, {price_id}, quantity {amount}):")
    for source_file, events, first, last in files:
        click.echo(f"   {events:>5} events from {source_file} rows {first}–{last}")
    click.echo(f"   query: SELECT * FROM line_item_events WHERE line_item_id = '{line_item_id}'")


def run_demo(settings: Settings) -> int:
    from usage_pipeline.cli.close import invoices_of, print_invoices, run_close
    from usage_pipeline.cli.demo_data import demo_files
    from usage_pipeline.cli.generate import write_files
    from usage_pipeline.cli.ingest import run_ingest
    from usage_pipeline.cli.instance import get_instance
    from usage_pipeline.cli.local_s3 import local_s3
    from usage_pipeline.core.ingest.s3 import s3_client
    from usage_pipeline.definitions import build_definitions

    started = time.perf_counter()
    instance = get_instance()
    with local_s3(bucket=settings.bucket) as endpoint:
        settings = settings.model_copy(update={"s3_endpoint_url": endpoint})
        client = s3_client(endpoint, settings.s3_max_attempts)
        arrival = datetime.now(UTC)
        files = demo_files(arrival)  # the same bytes all day long: a second demo today finds nothing new
        target = f"s3://{settings.bucket}/{settings.prefix}"
        write_files(target, files, s3_client=client)
        click.echo(f"1. local S3 endpoint {endpoint}: wrote {len(files)} sample files to {target}")

        # One set of definitions for both runs: the settings with this demo's S3 endpoint.
        defs = build_definitions(settings)
        result = run_ingest(instance, defs, settings)
        listed = client.list_objects_v2(Bucket=settings.bucket, Prefix=settings.prefix).get("Contents", [])
        versions = [(o["Key"], o["ETag"].strip('"')) for o in listed]
        click.echo(f"\n2. ingest: {len(result.run_ids)} Dagster run(s) {result.run_ids}; file by file:")
        _print_files(settings, versions, result.run_ids)

        today = arrival.date()
        close = run_close(instance, defs, today)
        click.echo(
            f"\n3. close {today} (billing periods ending today): run {close.run_id} "
            f"{'succeeded' if close.success else 'FAILED'}"
        )
        print_invoices(invoices_of(settings, today))
        _print_lineage(settings, today)

    click.echo(
        f"\nDone in {time.perf_counter() - started:.1f} s. Lake: {lake_of(settings).describe()}, data in "
        f"{settings.lake_data} (tables ingested_files, usage_events, rejected_events, meter_usage, "
        f"invoice_line_items, pending_invoices, invoice_revisions; view line_item_events). "
        f"Dagster runs: {instance.root_directory} "
        "— see them with `usage-pipeline dev`; query the lake with `usage-pipeline sql`."
    )
    return EXIT_OK if close.success and not result.failed_runs else EXIT_FAILED
