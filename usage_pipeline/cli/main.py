"""`usage-pipeline`: the terminal and cron face of everything the Dagster UI does (SPEC section 9)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import click

from usage_pipeline.cli.errors import OneLineErrorsGroup
from usage_pipeline.cli.exit_codes import EXIT_FAILED, EXIT_USAGE
from usage_pipeline.core.text import plural
from usage_pipeline.settings import ConfigError, Settings, load_settings

UTC_TIME = "%Y-%m-%d %H:%M:%S"
COUNTS_WIDTH = 58  # the row counts column of `ingest`, wide enough for a million rows a file


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


@click.group(cls=OneLineErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """usage_pipeline: S3 usage files -> DuckDB events -> metered, priced pending invoices."""


@main.command()
def ingest() -> None:
    """One sensor evaluation plus the runs it requests, executed now.

    Exit 0 when every processed file succeeded, succeeded with errors or was empty (or nothing was new),
    1 when any file failed or still waits for a retry, 2 on a usage or configuration error.
    """
    from usage_pipeline.cli.ingest import IngestBusyError, run_ingest
    from usage_pipeline.cli.instance import get_instance
    from usage_pipeline.core.ingest.store import STATUS_WIDTH, describe_outcome
    from usage_pipeline.definitions import build_definitions

    settings = _settings()
    check_lake(settings)
    try:
        result = run_ingest(get_instance(), build_definitions(settings), settings)
    except IngestBusyError as exc:
        click.echo(f"ingest: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    for outcome in result.outcomes:
        click.echo(describe_outcome(outcome, counts_width=COUNTS_WIDTH))
    for waiting in result.waiting:
        attempts = f"attempts={waiting.attempts}"
        click.echo(
            f"{'waiting':<{STATUS_WIDTH}} {attempts:<{COUNTS_WIDTH}} {waiting.key}  {waiting.error}", err=True
        )
    for run_id in result.failed_runs:
        click.echo(f"run {run_id} failed; its files stay pending and are requested again", err=True)
    if result.deferred:
        why = "the lake's catalog stayed busy" if result.store_busy else "backoff"
        click.echo(
            f"{result.deferred} more file version(s) wait for a retry ({why}); see `usage-pipeline files`",
            err=True,
        )
    if not result.outcomes and not result.failed_runs and not result.waiting and not result.deferred:
        click.echo(
            f"nothing new under s3://{settings.bucket}/{settings.prefix} ({result.keys_listed} keys listed)"
        )
    sys.exit(result.exit_code)


@main.command()
@click.option(
    "--failed",
    "only_failed",
    is_flag=True,
    help="Only keys whose newest version failed (acknowledged apart).",
)
@click.option("--waiting", "only_waiting", is_flag=True, help="Only versions without a ledger row yet.")
@click.option(
    "--ack",
    "ack_key",
    metavar="KEY",
    help="Acknowledge the newest version of KEY: it will not be fixed, the checks stop counting it.",
)
@click.option("--reason", help="Why the acknowledged file will not be fixed (required with --ack).")
def files(only_failed: bool, only_waiting: bool, ack_key: str | None, reason: str | None) -> None:
    """What is not done: failed files, and file versions still waiting for a ledger row (with their
    attempts and last error). Exit 0 when there are none, 1 otherwise.

    With --ack KEY --reason "…", acknowledges the newest version of KEY instead (as the OS user): a file
    that will not be fixed stops turning the checks no_failed_files / no_rejected_rows red; a newer
    version of KEY is judged afresh.
    """
    from usage_pipeline.cli.ingest import list_files
    from usage_pipeline.cli.instance import get_instance

    settings = _settings()
    if ack_key is not None or reason is not None:
        _acknowledge(settings, ack_key, reason, listing=only_failed or only_waiting)
    report = list_files(get_instance(), settings)
    show_all = not (only_failed or only_waiting)
    if show_all or only_failed:
        click.echo(f"failed: {plural(len(report.failed), 'key')} whose newest version failed")
        for row in report.failed:
            click.echo(
                f"  {row['file_key']}  (etag {row['etag']}, arrived {row['arrived_at']:{UTC_TIME}} UTC, "
                f"failing since {row['failing_since']:{UTC_TIME}} UTC)"
                f"\n      {row['failed_reason']}: {row['failed_detail']}"
            )
        if report.acknowledged:
            click.echo(
                f"acknowledged: {plural(len(report.acknowledged), 'failed key')} an operator will not fix "
                "(not counted by the checks)"
            )
        for row in report.acknowledged:
            click.echo(
                f"  {row['file_key']}  (etag {row['etag']}, acknowledged by {row['acknowledged_by']} "
                f"at {row['acknowledged_at']:{UTC_TIME}} UTC: {row['acknowledged_reason']})"
                f"\n      {row['failed_reason']}: {row['failed_detail']}"
            )
    if show_all or only_waiting:
        waiting = len(report.waiting) + len(report.pending_requests)
        click.echo(
            f"waiting: {plural(waiting, 'version')} without a ledger row yet (requested again with backoff)"
        )
        for row in report.waiting:
            click.echo(
                f"  {row['file_key']}  (etag {row['etag']}, {plural(int(row['attempts']), 'attempt')}, first "
                f"{row['first_attempt_at']:{UTC_TIME}} UTC, last run {row['last_run_id']})"
                f"\n      {row['last_error'] or 'the last attempt is still running or ended without a word'}"
            )
        for p in report.pending_requests:
            click.echo(
                f"  {p.file.key}  (etag {p.file.etag}, requested {plural(p.requests, 'time')}, "
                "no run took it up yet)"
            )
    failed_shown = (show_all or only_failed) and bool(report.failed)
    waiting_shown = (show_all or only_waiting) and bool(report.waiting or report.pending_requests)
    sys.exit(EXIT_FAILED if failed_shown or waiting_shown else 0)


def _acknowledge(settings: Settings, key: str | None, reason: str | None, *, listing: bool) -> NoReturn:
    """`files --ack KEY --reason "…"`: one line saying what was acknowledged, or one line saying why not
    (exit 2)."""
    from usage_pipeline.cli.ingest import acknowledge_file

    refusal = None
    if key is None:
        refusal = "files: --reason goes with --ack KEY"
    elif not (reason or "").strip():
        refusal = f'files --ack: say why {key} will not be fixed, with --reason "…"'
    elif listing:
        refusal = "files --ack: acknowledge alone; list with `usage-pipeline files --failed` afterwards"
    if refusal is not None:
        click.echo(refusal, err=True)
        sys.exit(EXIT_USAGE)
    assert key is not None and reason is not None
    ack = acknowledge_file(settings, key, reason.strip())
    if ack is None:
        click.echo(f"files --ack: the ledger has no version of {key} (see `usage-pipeline files`)", err=True)
        sys.exit(EXIT_USAGE)
    if ack.failed_reason:
        state = f"failed: {ack.failed_reason}"
    elif ack.rows_rejected:
        state = f"{ack.status}, {plural(ack.rows_rejected, 'row')} rejected"
    else:
        state = ack.status
    click.echo(
        f"acknowledged {ack.file_key} (etag {ack.etag}, arrived {ack.arrived_at:{UTC_TIME}} UTC, "
        f"{state}) by {ack.acknowledged_by} at {ack.acknowledged_at:{UTC_TIME}} UTC: {ack.reason}"
    )
    sys.exit(0)


@main.command()
@click.option(
    "--date", "day", required=True, help="The UTC day whose ending billing periods are closed (YYYY-MM-DD)."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Compute the partition and print, per invoice, what closing it would change; write nothing.",
)
def close(day: str, dry_run: bool) -> None:
    """Materialize the period-close partition of DAY (re-running regenerates it, same invoice ids).

    With --dry-run: compute it from the lake as a close would now and print, per invoice, the lines it
    would add, remove or change (old and new quantity and amount), then a summary; no run is started and
    nothing is written.
    """
    from usage_pipeline.cli.close import run_close_command, run_dry_run_command

    command = run_dry_run_command if dry_run else run_close_command
    sys.exit(command(_settings(), day))


def check_lake(settings: Settings) -> None:
    """Open the lake for writing (creating it when new) before any run exists: an unreachable or
    misconfigured catalog or data path is one line and exit 2, not a failed run."""
    from usage_pipeline.core.storage.lake import connect
    from usage_pipeline.settings import lake_of

    with connect(lake_of(settings)):
        pass


@main.command()
def demo() -> None:
    """Local S3 endpoint, sample files (both layouts, bad rows, duplicates), ingest, close; print it all."""
    from usage_pipeline.cli.demo import run_demo

    sys.exit(run_demo(_settings()))


@main.command()
@click.option("--port", default=3000, show_default=True, help="Port of the Dagster UI.")
@click.option("--s3-port", default=9555, show_default=True, help="Port of the local S3 endpoint.")
def dev(port: int, s3_port: int) -> None:
    """Start the local S3 endpoint and the Dagster UI with sensors and schedules on."""
    from usage_pipeline.cli.instance import ensure_dagster_home
    from usage_pipeline.cli.local_s3 import local_s3

    settings = _settings()
    home = ensure_dagster_home()
    if settings.s3_endpoint_url:
        click.echo(f"using the S3 endpoint in AWS_ENDPOINT_URL_S3: {settings.s3_endpoint_url}")
        _dagster_dev(port)
        return
    with local_s3(port=s3_port, bucket=settings.bucket) as endpoint:
        click.echo(f"local S3 endpoint: {endpoint} (bucket {settings.bucket}, prefix {settings.prefix})")
        click.echo(
            f"drop files with: AWS_ENDPOINT_URL_S3={endpoint} usage-pipeline generate --out "
            f"s3://{settings.bucket}/{settings.prefix}"
        )
        click.echo(f"Dagster instance: {home}; UI on http://127.0.0.1:{port}")
        _dagster_dev(port)


def workspace_yaml() -> str:
    from usage_pipeline.cli.launch import DEFINITIONS_MODULE, LOCATION_NAME, WORKING_DIRECTORY

    return (
        "load_from:\n  - python_module:\n"
        f"      module_name: {DEFINITIONS_MODULE}\n"
        f"      working_directory: {WORKING_DIRECTORY}\n"
        f"      location_name: {LOCATION_NAME}\n"
    )


def _dagster_dev(port: int) -> None:
    """`dg dev` from inside DAGSTER_HOME, so that Dagster reads the instance config there (a
    dagster.yaml in the working folder that is not DAGSTER_HOME draws a warning), with every relative
    path resolved against this folder first: the lake and the catalog stay where the CLI puts them."""
    project = Path.cwd()
    env = os.environ.copy()
    for var, default in (("USAGE_LAKE_DATA", "data/lake/"), ("USAGE_CATALOG_PATH", "")):
        value = env.get(var) or default
        if value and "://" not in value and not Path(value).is_absolute():
            env[var] = str(project / value)
    lake = env.get("USAGE_LAKE") or "sqlite:data/usage.sqlite"
    kind, _, location = lake.partition(":")
    if kind in ("sqlite", "duckdb") and not Path(location).is_absolute():
        env["USAGE_LAKE"] = f"{kind}:{project / location}"
    workspace = project / "workspace.yaml"
    if not workspace.exists():
        # Outside a checkout: a workspace naming the location as the CLI's runs do (cli/launch.py), so
        # that the UI lists them under their job.
        workspace = Path(env["DAGSTER_HOME"]) / "workspace.yaml"
        workspace.write_text(workspace_yaml())
    target = ["-w", str(workspace)]
    # `dg dev` (Dagster's current CLI) with an explicit target starts the same server as `dagster dev`,
    # without the latter's supersession warning.
    command = [str(Path(sys.executable).parent / "dg"), "dev", *target, "-p", str(port)]
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(command, check=False, env=env, cwd=env["DAGSTER_HOME"])


@main.command()
@click.option(
    "--out", required=True, help="A folder, or s3://bucket/prefix (uses AWS_ENDPOINT_URL_S3 when set)."
)
@click.option("--files", "n_files", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--rows", default=1000, show_default=True, type=click.IntRange(min=0), help="Rows per file.")
@click.option("--layout", type=click.Choice(["stripe", "chargebee"]), default="stripe", show_default=True)
@click.option(
    "--format",
    "fmt",
    show_default=True,
    default="csv",
    type=click.Choice(["csv", "json", "jsonl", "csv.gz", "json.gz", "jsonl.gz"]),
)
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--duplicate-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--seed", default=0, show_default=True, type=int)
def generate(
    out: str,
    n_files: int,
    rows: int,
    layout: str,
    fmt: str,
    error_rate: float,
    duplicate_rate: float,
    seed: int,
) -> None:
    """Write synthetic usage files (sizes, layouts, formats, error and duplicate rates)."""
    from datetime import UTC, datetime

    from usage_pipeline.cli.generate import generate_usage_file, write_files
    from usage_pipeline.core.ingest.s3 import s3_client

    settings = _settings()
    arrival = datetime.now(UTC)
    files = {}
    for i in range(n_files):
        name = f"{layout}-{arrival:%Y%m%dT%H%M%S}-{seed}-{i:04d}.{fmt}"
        files[name] = generate_usage_file(
            layout=layout,
            fmt=fmt,
            rows=rows,
            arrival=arrival,
            seed=seed * 100_003 + i,
            error_rate=error_rate,
            duplicate_rate=duplicate_rate,
            key_hint=name,
        )
    client = (
        s3_client(settings.s3_endpoint_url, settings.s3_max_attempts) if out.startswith("s3://") else None
    )
    for written in write_files(out, files, s3_client=client):
        click.echo(written)


@main.command()
@click.option(
    "--files", "n_files", type=click.IntRange(min=1), help="CSV files for floor vs ingest [default: 5]."
)
@click.option(
    "--events-per-file",
    "--rows",
    "rows",
    type=click.IntRange(min=1),
    help="Events per file [default: 1,000,000].",
)
@click.option(
    "--history",
    type=click.IntRange(min=0),
    help="Stored events over a year for the history figure (0 skips it) [default: 50,000,000].",
)
@click.option(
    "--same-day-history",
    type=click.IntRange(min=0),
    help="Stored events on the batch's own day, all inside the Stripe dedup window (0 skips it) "
    "[default: 10,000,000].",
)
@click.option(
    "--history-files",
    type=click.IntRange(min=1),
    help="Files ingested into each history store; the median is reported [default: 3].",
)
@click.option("--skip-native", is_flag=True, help="Measure the lake only, not the native DuckDB file.")
@click.option("--skip-lake", is_flag=True, help="Measure the native DuckDB file only.")
@click.option(
    "--small",
    is_flag=True,
    help="A quick check of the floor / ingest / history part: 2 files x 50,000 events, 1M / 200k stored, "
    "1 history file (options still apply).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Everything ~20x smaller: 5 x 50k events, 2.5M / 500k stored; workloads scaled by 0.05 "
    "(options still apply).",
)
@click.option("--skip-storage", is_flag=True, help="Leave out the floor / ingest / history part.")
@click.option(
    "--skip-history",
    is_flag=True,
    help="Leave out the history figures (same as --history 0 --same-day-history 0).",
)
@click.option("--skip-e2e", is_flag=True, help="Leave out the end-to-end workloads (and so the peers).")
@click.option(
    "--workloads",
    metavar="NAMES",
    help="End-to-end workloads, comma-separated, of: "
    "10x1M-csv, 100x100k-csv, 100x100k-jsonl, 100x10k-csv, 1000x100-csv [default: all].",
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    help="Resize the end-to-end workloads: rows per file times SCALE (for 1000x100-csv, the number of "
    "files) [default: 1, 0.05 with --quick].",
)
@click.option(
    "--peers/--skip-peers",
    default=False,
    help="Also run dlt (its own venv under --workdir, installed once) and a hand-written DuckDB script "
    "on the same files [default: --skip-peers].",
)
@click.option("--workdir", default="bench/out", show_default=True)
@click.option("--keep", is_flag=True, help="Keep the stores under --workdir.")
def bench(
    n_files: int | None,
    rows: int | None,
    history: int | None,
    same_day_history: int | None,
    history_files: int | None,
    skip_native: bool,
    skip_lake: bool,
    small: bool,
    quick: bool,
    skip_storage: bool,
    skip_history: bool,
    skip_e2e: bool,
    workloads: str | None,
    scale: float | None,
    peers: bool,
    workdir: str,
    keep: bool,
) -> None:
    """Ingest vs the floor (S3 GET + read_csv + plain INSERT) and cost vs stored history, on the lake
    (SQLite catalog + Parquet) and on a native DuckDB file; then the product end to end (a
    `usage-pipeline ingest` process) vs the ingest step per workload, and with --peers dlt and a
    hand-written DuckDB script on the same S3 files. Prints markdown tables with the targets."""
    from usage_pipeline.cli.bench import (
        QUICK_SCALE,
        WORKLOAD_NAMES,
        BenchConfig,
        E2EConfig,
        run_bench,
        with_overrides,
    )

    storages = tuple(k for k, skip in (("lake", skip_lake), ("native", skip_native)) if not skip)
    if not storages and not skip_storage:
        raise click.UsageError(
            "--skip-lake and --skip-native leave nothing to measure (or add --skip-storage)"
        )
    names = [n.strip() for n in workloads.split(",") if n.strip()] if workloads else None
    unknown = sorted(set(names or ()) - set(WORKLOAD_NAMES))
    if unknown:
        raise click.UsageError(
            f"--workloads: unknown {', '.join(unknown)}; known: {', '.join(WORKLOAD_NAMES)}"
        )
    if skip_storage and skip_e2e:
        raise click.UsageError("--skip-storage and --skip-e2e leave nothing to measure")
    base = BenchConfig.quick() if quick else BenchConfig.small() if small else BenchConfig()
    config = with_overrides(
        base,
        files=n_files,
        events_per_file=rows,
        history=0 if skip_history else history,
        same_day_history=0 if skip_history else same_day_history,
        history_files=history_files,
        storages=storages or base.storages,
    )
    e2e = None
    if not skip_e2e:
        e2e = E2EConfig.of(names, scale if scale is not None else QUICK_SCALE if quick else 1.0, peers)
    run_bench(config=config, workdir=Path(workdir), keep=keep, e2e=e2e, storage=not skip_storage)


@main.command()
@click.argument("query", required=False)
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header instead of a table.")
@click.option(
    "--snapshot",
    type=click.IntRange(min=0),
    metavar="N",
    help="Query the lake as of snapshot N (SELECT * FROM snapshots() lists them).",
)
@click.option(
    "--print-attach",
    is_flag=True,
    help="Print the LOAD / ATTACH … (READ_ONLY) statements for your own DuckDB 1.5.5 session.",
)
def sql(query: str | None, as_csv: bool, snapshot: int | None, print_attach: bool) -> None:
    """Run QUERY on the lake, read-only, and print a table (or CSV); with no QUERY, a read-only prompt
    (statements end with ';', .tables, .quit; piped statements are read from stdin).

    Exit 0, or 2 on a SQL error, a refused write (usage-pipeline sql never writes) or a lake that was
    never created.
    """
    from usage_pipeline.cli.sql import run_sql_command
    from usage_pipeline.cli.sql_output import Format
    from usage_pipeline.settings import lake_of

    fmt: Format = "csv" if as_csv else "table"
    lake = lake_of(_settings())
    sys.exit(run_sql_command(lake, query, fmt=fmt, snapshot=snapshot, print_attach=print_attach))


if __name__ == "__main__":  # pragma: no cover
    main()
