"""`usage-pipeline sql`: real processes on a real lake, read-only, while another process writes."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from usage_pipeline.cli import sql_output
from usage_pipeline.cli.sql import (
    QueryError,
    attach_lines,
    refusal,
    repl,
    run_query,
    split_statements,
    statement_complete,
)
from usage_pipeline.core.storage.lake import Lake, current_snapshot, open_read_only

INVOICES = [
    # invoice_id, subscription, customer, total, lines
    ("in_0001", "sub_001", "cus_001", "49.0000", 1),
    ("in_0002", "sub_002", "cus_002", "1234.5600", 3),
]
READ_ONLY = "read-only: usage-pipeline sql never writes"


def add_invoice(
    conn: duckdb.DuckDBPyConnection, invoice_id: str, sub: str, customer: str, total: str, lines: int
):
    conn.execute(
        """INSERT INTO pending_invoices VALUES ($id, DATE '2026-02-15', $sub, $customer,
             TIMESTAMP '2026-01-15 00:00:00', TIMESTAMP '2026-02-15 00:00:00', 'USD', $total, $lines,
             'pending', TIMESTAMP '2026-02-16 01:00:00')""",
        {"id": invoice_id, "sub": sub, "customer": customer, "total": total, "lines": lines},
    )


@pytest.fixture
def invoices_lake(lake: Lake, lake_conn: duckdb.DuckDBPyConnection) -> Lake:
    """A lake with the pipeline's tables and two pending invoices, committed."""
    for invoice in INVOICES:
        add_invoice(lake_conn, *invoice)
    return lake


def lake_env(lake: Lake) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_")}
    env.update(USAGE_LAKE=lake.catalog, USAGE_LAKE_DATA=lake.data_path, PYTHONUNBUFFERED="1")
    return env


def usage_sql(lake: Lake, *args: str, stdin: str | None = None, timeout: float = 120):
    """`usage-pipeline sql ARGS` as a separate process, configured by USAGE_LAKE / USAGE_LAKE_DATA only."""
    return subprocess.run(
        [sys.executable, "-m", "usage_pipeline.cli", "sql", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=lake_env(lake),
        timeout=timeout,
    )


# --- one query ------------------------------------------------------------------------------------------


def test_a_query_prints_an_aligned_table_with_a_row_count(invoices_lake: Lake):
    done = usage_sql(
        invoices_lake,
        "SELECT invoice_id, total, line_count, NULL AS note FROM pending_invoices ORDER BY invoice_id",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        " invoice_id |     total | line_count | note",
        "------------+-----------+------------+------",
        " in_0001    |   49.0000 |          1 | NULL",
        " in_0002    | 1234.5600 |          3 | NULL",
        "(2 rows)",
    ]
    assert done.stderr == ""


def test_csv_prints_a_header_and_every_row(invoices_lake: Lake):
    done = usage_sql(
        invoices_lake,
        "--csv",
        "SELECT invoice_id, total, period_start, NULL AS note, 'a, \"b\"' AS text FROM pending_invoices "
        "ORDER BY invoice_id",
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows == [
        ["invoice_id", "total", "period_start", "note", "text"],
        ["in_0001", "49.0000", "2026-01-15 00:00:00", "", 'a, "b"'],
        ["in_0002", "1234.5600", "2026-01-15 00:00:00", "", 'a, "b"'],
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO pending_invoices SELECT * FROM pending_invoices",
        "DELETE FROM pending_invoices",
        "CREATE TABLE notes (note VARCHAR)",
        "DROP TABLE pending_invoices",
        "SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)",
    ],
)
def test_a_write_is_refused_in_one_line(invoices_lake: Lake, statement: str):
    done = usage_sql(invoices_lake, statement)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert READ_ONLY in done.stderr
    assert run_query(invoices_lake, "SELECT count(*) AS n FROM pending_invoices", "csv") == "n\n2\n"


def test_copy_to_a_file_is_refused_and_writes_nothing(invoices_lake: Lake, tmp_path: Path):
    target = tmp_path / "out.csv"
    done = usage_sql(invoices_lake, f"COPY pending_invoices TO '{target}'")
    assert done.returncode == 2
    assert f"{READ_ONLY} (COPY refused)" in done.stderr
    assert not target.exists()


def test_a_sql_error_is_one_line_and_exit_2(invoices_lake: Lake):
    done = usage_sql(invoices_lake, "SELECT nope FROM pending_invoices")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("sql: Binder Error:")
    assert len(done.stderr.splitlines()) == 1
    parse = usage_sql(invoices_lake, "SELEC 1")
    assert parse.returncode == 2
    assert parse.stderr.strip() == 'sql: Parser Error: syntax error at or near "SELEC"'


def test_a_lake_never_created_names_usage_lake_and_stays_uncreated(tmp_path: Path):
    lake = Lake(
        catalog=f"sqlite:{tmp_path / 'none' / 'usage.sqlite'}", data_path=str(tmp_path / "none" / "lake")
    )
    done = usage_sql(lake, "SELECT 1")
    assert done.returncode == 2
    assert "was never created" in done.stderr
    assert "USAGE_LAKE" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "none").exists()
    prompt = usage_sql(lake, stdin="SELECT 1;\n")
    assert prompt.returncode == 2
    assert "was never created" in prompt.stderr


def test_an_earlier_snapshot(lake: Lake, lake_conn: duckdb.DuckDBPyConnection):
    add_invoice(lake_conn, *INVOICES[0])
    before = current_snapshot(lake_conn)
    add_invoice(lake_conn, *INVOICES[1])
    query = "SELECT string_agg(invoice_id, ' ' ORDER BY invoice_id) AS ids FROM pending_invoices"
    assert usage_sql(lake, "--csv", "--snapshot", str(before), query).stdout == "ids\nin_0001\n"
    assert usage_sql(lake, "--csv", query).stdout == "ids\nin_0001 in_0002\n"
    assert run_query(lake, query, "csv", snapshot=before) == "ids\nin_0001\n"
    missing = usage_sql(lake, "--snapshot", "9999", query)
    assert missing.returncode == 2
    assert "No snapshot found at version 9999" in missing.stderr


# --- the prompt -----------------------------------------------------------------------------------------


def test_piped_statements_span_lines_and_errors_do_not_stop_the_prompt(invoices_lake: Lake):
    script = textwrap.dedent(
        """\
        SELECT invoice_id,
               total
        FROM pending_invoices
        WHERE customer_id = 'cus_002';
        SELECT nope;
        INSERT INTO pending_invoices SELECT * FROM pending_invoices;
        .tables
        SELECT 'a;
        b' AS text; SELECT 2 AS two;
        .quit
        SELECT 'never read';
        """
    )
    done = usage_sql(invoices_lake, stdin=script)
    assert done.returncode == 2  # piped: a statement failed, so the script can tell
    errors = done.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith('error: Binder Error: Referenced column "nope"')
    assert errors[1] == f"error: {READ_ONLY} (INSERT refused)"
    out = done.stdout
    assert " invoice_id |     total\n------------+-----------\n in_0002    | 1234.5600\n(1 row)\n" in out
    assert " pending_invoices      | table" in out
    assert " a;\\nb\n" in out
    assert " two\n-----\n   2\n(1 row)\n" in out
    assert "never read" not in out
    assert "lake>" not in out  # no prompts when nobody types


def test_echo_a_statement_into_the_prompt(invoices_lake: Lake):
    done = usage_sql(invoices_lake, stdin="SELECT count(*) AS n FROM pending_invoices;\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == " n\n---\n 2\n(1 row)\n\n"
    csv_done = usage_sql(invoices_lake, "--csv", stdin="SELECT 1 AS one;\nSELECT 2 AS two")  # no ';' at EOF
    assert csv_done.stdout == "one\n1\ntwo\n2\n"


def test_repl_streams(invoices_lake: Lake):
    conn = open_read_only(invoices_lake)
    assert conn is not None
    out, err = io.StringIO(), io.StringIO()
    try:
        code = repl(conn, io.StringIO(".help\nSELECT 1 AS x\n;\n.bogus\n"), out, err)
    finally:
        conn.close()
    assert code == 2
    assert ".tables" in out.getvalue()
    assert " x\n---\n 1\n(1 row)\n" in out.getvalue()
    assert err.getvalue() == "error: unknown command .bogus (.help lists them)\n"


# --- while the pipeline writes --------------------------------------------------------------------------

WRITER = """
import sys, time
from usage_pipeline.core.storage.lake import Lake, connect, transaction
lake = Lake(catalog=sys.argv[1], data_path=sys.argv[2])
with connect(lake) as conn, transaction(conn):
    conn.execute("INSERT INTO pending_invoices SELECT * REPLACE ('in_uncommitted' AS invoice_id) "
                 "FROM pending_invoices")
    print("inserted", flush=True)
    time.sleep(300)
"""


def test_a_read_answers_promptly_while_a_write_transaction_is_open(invoices_lake: Lake):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, invoices_lake.catalog, invoices_lake.data_path],
        stdout=subprocess.PIPE,
        text=True,
        env=lake_env(invoices_lake),
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "inserted"  # the transaction is open, uncommitted
        started = time.monotonic()
        done = usage_sql(
            invoices_lake, "--csv", "SELECT invoice_id FROM pending_invoices ORDER BY ALL", timeout=60
        )
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert done.stdout == "invoice_id\nin_0001\nin_0002\n"  # the committed rows only
        assert elapsed < 30, f"the read waited {elapsed:.1f} s for the writer"
        assert writer.poll() is None  # the writer still holds its transaction
    finally:
        writer.kill()
        writer.wait()


# --- for analysts' own DuckDB sessions ------------------------------------------------------------------


def test_print_attach_lines_work_in_a_plain_duckdb_session(invoices_lake: Lake):
    done = usage_sql(invoices_lake, "--print-attach")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == attach_lines(invoices_lake)
    assert [line.split()[0] for line in lines] == ["LOAD", "LOAD", "ATTACH", "USE"]
    assert lines[2].endswith("READ_ONLY);")
    session = duckdb.connect()  # what an analyst's notebook does, default configuration
    try:
        for line in lines:
            session.execute(line)
        assert session.execute("SELECT count(*) FROM pending_invoices").fetchone() == (2,)
        with pytest.raises(duckdb.Error, match="read-only"):
            session.execute("DELETE FROM pending_invoices")
    finally:
        session.close()
    snapshot = usage_sql(invoices_lake, "--print-attach", "--snapshot", "1").stdout.splitlines()
    assert snapshot[2].endswith("READ_ONLY, SNAPSHOT_VERSION 1);")


# --- the pieces -----------------------------------------------------------------------------------------


def test_a_table_cuts_long_values_and_counts_rows_it_does_not_show(
    invoices_lake: Lake, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sql_output, "MAX_TABLE_ROWS", 3)
    text = run_query(invoices_lake, "SELECT range AS i, repeat('x', 80) AS long FROM range(10)")
    lines = text.splitlines()
    assert len(lines) == 2 + 3 + 1
    assert lines[2] == " 0 | " + "x" * (sql_output.MAX_VALUE_WIDTH - 1) + "…"
    assert lines[-1] == "(3 of 10 rows shown: add a LIMIT or a WHERE, or use --csv for all)"
    assert run_query(invoices_lake, "SELECT 1 AS x WHERE false") == " x\n---\n(0 rows)\n"


def test_what_is_refused_and_what_is_not():
    def why(text: str) -> str | None:
        return refusal(duckdb.extract_statements(text)[0])

    for reading in [
        "SELECT 1",
        "FROM snapshots()",
        "DESCRIBE pending_invoices",
        "SHOW TABLES",
        "SUMMARIZE pending_invoices",
        "EXPLAIN SELECT 1",
        "SET threads = 2",
        "BEGIN",
        "SELECT * FROM ducklake_table_info('lake')",
    ]:
        assert why(reading) is None, reading
    for writing, kind in [
        ("ATTACH 'other.db' AS other", "ATTACH"),
        ("DETACH lake", "DETACH"),
        ("LOAD httpfs", "LOAD"),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "INSERT"),
        ("CHECKPOINT", "CHECKPOINT"),
        ("CALL lake.merge_adjacent_files()", "merge_adjacent_files"),
        ("CALL ducklake_expire_snapshots('lake', older_than => now())", "ducklake_expire_snapshots"),
    ]:
        assert why(writing) == f"{READ_ONLY} ({kind} refused)", writing
    with pytest.raises(QueryError, match="INSERT refused"):
        split_statements("SELECT 1; INSERT INTO t VALUES (1)")  # refused before anything runs


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("SELECT 1;", True),
        ("SELECT 1", False),
        ("SELECT 1; -- done", True),
        ("SELECT ';' AS s", False),
        ("SELECT 'it''s;'\n;", True),
        ("SELECT 1 /* ; */", False),
        ('SELECT 1 AS ";"', False),
        ("SELECT $$;$$", False),
        ("SELECT $$;$$;", True),
    ],
)
def test_a_statement_ends_with_a_semicolon_outside_quotes_and_comments(text: str, complete: bool):
    assert statement_complete(text) is complete
