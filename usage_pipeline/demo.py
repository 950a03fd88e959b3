"""`usage-pipeline demo`: the whole product on a laptop with no AWS account, in under a minute."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
import duckdb

from usage_pipeline.exit_codes import EXIT_FAILED, EXIT_OK
from usage_pipeline.settings import Settings


def _ledger_rows(settings: Settings, versions: list[tuple[str, str]]) -> list[tuple]:
    with duckdb.connect(settings.duckdb_path, read_only=True) as conn:
        return conn.execute(
            """SELECT status, rows_total, rows_accepted, rows_duplicate, rows_rejected, file_key,
                      failed_reason || ': ' || left(failed_detail, 90), run_id
               FROM ingested_files
               WHERE (file_key, etag) IN (SELECT (unnest($keys), unnest($etags)))
               ORDER BY arrived_at, file_key""",
            {"keys": [k for k, _ in versions], "etags": [e for _, e in versions]},
        ).fetchall()


def _reject_codes(settings: Settings, run_ids: list[str]) -> list[tuple]:
    with duckdb.connect(settings.duckdb_path, read_only=True) as conn:
        return conn.execute(
            """SELECT r.error_code, count(*) FROM rejected_events AS r
               JOIN ingested_files AS f ON f.file_key = r.source_file AND f.etag = r.source_etag
               WHERE f.run_id IN (SELECT unnest($runs)) GROUP BY ALL ORDER BY 2 DESC""",
            {"runs": run_ids},
        ).fetchall()


def _print_lineage(settings: Settings, day) -> None:
    """Lineage from an invoice line down to the S3 files and rows behind it (the line_item_events view)."""
    with duckdb.connect(settings.duckdb_path, read_only=True) as conn:
        line = conn.execute(
            """SELECT line_item_id, invoice_id, price_id, quantity FROM invoice_line_items
               WHERE close_date = $day AND meter_id IS NOT NULL ORDER BY invoice_id, price_id LIMIT 1""",
            {"day": day},
        ).fetchall()
        if not line:
            return
        line_item_id, invoice_id, price_id, quantity = line[0]
        files = conn.execute(
            """SELECT source_file, count(*), min(source_row), max(source_row) FROM line_item_events
               WHERE line_item_id = $id GROUP BY ALL ORDER BY 1""",
            {"id": line_item_id},
        ).fetchall()
    amount = f"{quantity.normalize():f}"
    click.echo(f"\n4. lineage of line {line_item_id} ({invoice_id}, {price_id}, quantity {amount}):")
    for source_file, events, first, last in files:
        click.echo(f"   {events:>5} events from {source_file} rows {first}–{last}")
    click.echo(f"   query: SELECT * FROM line_item_events WHERE line_item_id = '{line_item_id}'")


def run_demo(settings: Settings) -> int:
    from usage_pipeline.close_command import invoices_of, print_invoices, run_close
    from usage_pipeline.definitions import build_definitions
    from usage_pipeline.demo_data import demo_files
    from usage_pipeline.generate import write_files
    from usage_pipeline.ingest.s3 import s3_client
    from usage_pipeline.instance import get_instance
    from usage_pipeline.local_s3 import local_s3
    from usage_pipeline.operations import run_ingest

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

        result = run_ingest(instance, build_definitions(settings), settings)
        listed = client.list_objects_v2(Bucket=settings.bucket, Prefix=settings.prefix).get("Contents", [])
        versions = [(o["Key"], o["ETag"].strip('"')) for o in listed]
        click.echo(f"\n2. ingest: {len(result.run_ids)} Dagster run(s) {result.run_ids}; file by file:")
        for status, total, acc, dup, rej, key, reason, run_id in _ledger_rows(settings, versions):
            earlier = "" if run_id in result.run_ids else "  (same version ingested by an earlier run)"
            counts = f"total={total} accepted={acc} duplicate={dup} rejected={rej}"
            click.echo(f"   {status:<22} {counts:<50} {key}{'  ' + reason if reason else ''}{earlier}")
        codes = _reject_codes(settings, result.run_ids)
        if codes:
            click.echo("   rejected rows by code: " + ", ".join(f"{code} {n}" for code, n in codes))

        today = arrival.date()
        close = run_close(instance, build_definitions(settings), today)
        click.echo(
            f"\n3. close {today} (billing periods ending today): run {close.run_id} "
            f"{'succeeded' if close.success else 'FAILED'}"
        )
        print_invoices(invoices_of(settings, today))
        _print_lineage(settings, today)

    click.echo(
        f"\nDone in {time.perf_counter() - started:.1f} s. DuckDB: {settings.duckdb_path} "
        f"(tables ingested_files, usage_events, rejected_events, meter_usage, invoice_line_items, "
        f"pending_invoices; view line_item_events). Dagster runs: {instance.root_directory} "
        "— see them with `usage-pipeline dev`."
    )
    return EXIT_OK if close.success and not result.failed_runs else EXIT_FAILED
