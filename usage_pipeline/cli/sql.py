"""`usage-pipeline sql`: the analyst's read-only way into the lake, one query or an interactive prompt."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from types import ModuleType
from typing import TextIO

import duckdb

from usage_pipeline.cli.exit_codes import EXIT_OK, EXIT_USAGE
from usage_pipeline.cli.sql_output import Format, write_relation
from usage_pipeline.core.storage.lake import LAKE_ALIAS, Lake, extension_path, open_read_only

HISTORY_FILE = Path.home() / ".usage_pipeline_sql_history"
READ_ONLY = "read-only: usage-pipeline sql never writes"

# Statement kinds that only read (SET covers USE and RESET, TRANSACTION covers BEGIN / COMMIT). Anything
# else (INSERT, CREATE, COPY, ATTACH, LOAD, PREPARE …) is refused before it runs.
_READING_KINDS = {
    duckdb.StatementType.SELECT,
    duckdb.StatementType.EXPLAIN,
    duckdb.StatementType.SET,
    duckdb.StatementType.VARIABLE_SET,
    duckdb.StatementType.TRANSACTION,
    duckdb.StatementType.PRAGMA,
    duckdb.StatementType.CALL,
}
# DuckLake maintenance and checkpoints: a READ_ONLY attach stops their catalog writes but not always their
# file writes (a read-only `ducklake_cleanup_old_files` still deletes files, CHECKPOINT writes Parquet
# before failing), so they are refused by name, wherever they appear.
_WRITING_CALLS = re.compile(
    r"\b(?:ducklake_)?(?:add_data_files|cleanup_old_files|delete_orphaned_files|expire_snapshots"
    r"|flush_inlined_data|merge_adjacent_files|rewrite_data_files|set_commit_message|set_option)\b"
    r"|\bducklake_commit\b|\bforce_checkpoint\b|\bcheckpoint\s*\(|^\s*(?:force\s+)?checkpoint\b",
    re.IGNORECASE,
)
_EXPLAIN_PREFIX = re.compile(r"^\s*explain\s+(?:analy[sz]e\s+|\([^)]*\)\s*)?", re.IGNORECASE)
TABLES_QUERY = f"""
    SELECT CASE WHEN table_schema = 'main' THEN table_name ELSE table_schema || '.' || table_name END AS name,
           CASE WHEN table_type = 'VIEW' THEN 'view' ELSE 'table' END AS kind
    FROM information_schema.tables
    WHERE table_catalog = '{LAKE_ALIAS}'
    ORDER BY table_schema <> 'main', table_schema, table_name"""
HELP = """\
Statements end with ';' and may span lines; each runs read-only on the lake.
  .tables   the lake's tables and views
  .help     this text
  .quit     leave (also .exit, or end of input)"""


class QueryError(Exception):
    """A statement that failed or was refused, said in one line."""


class LakeNotCreatedError(Exception):
    """USAGE_LAKE names a catalog that nothing ever wrote."""


def _one_line(exc: BaseException) -> str:
    """A DuckDB message up to its first blank line (drops the LINE/caret excerpt), as one line."""
    text = str(exc).strip().split("\n\n")[0]
    return " ".join(text.split()) or type(exc).__name__


# --- opening the lake -----------------------------------------------------------------------------------


def _attach_statement(lake: Lake, snapshot: int | None) -> str:
    attach = lake.attach_sql(read_only=True)
    if snapshot is None:
        return attach
    assert attach.endswith(")"), attach  # ATTACH … (…, READ_ONLY): the snapshot joins the options
    return f"{attach[:-1]}, SNAPSHOT_VERSION {int(snapshot)})"


def attach_lines(lake: Lake, snapshot: int | None = None) -> list[str]:
    """The statements a DuckDB 1.5.5 session (CLI, Python, notebook) runs to read this lake, read-only."""
    loads = [f"LOAD '{extension_path(name)}';" for name in lake.extensions()]
    return [*loads, f"{_attach_statement(lake, snapshot)};", f"USE {LAKE_ALIAS};"]


def never_created(lake: Lake) -> str:
    return (
        f"sql: the lake {lake.describe()} was never created (nothing has been written yet): check USAGE_LAKE "
        "and USAGE_LAKE_DATA, or run `usage-pipeline ingest` (or `usage-pipeline demo`) first"
    )


def open_lake(lake: Lake, snapshot: int | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection with the lake as its current database, as of `snapshot` when given."""
    conn = open_read_only(lake)
    if conn is None:
        raise LakeNotCreatedError(never_created(lake))
    if snapshot is not None:
        try:
            conn.execute("USE memory")
            conn.execute(f"DETACH {LAKE_ALIAS}")
            conn.execute(_attach_statement(lake, snapshot))
            conn.execute(f"USE {LAKE_ALIAS}")
        except duckdb.Error as exc:
            conn.close()
            raise QueryError(
                f"sql --snapshot {snapshot}: {_one_line(exc)} "
                '(`usage-pipeline sql "FROM snapshots()"` lists the snapshots the lake keeps)'
            ) from exc
    return conn


# --- running statements ---------------------------------------------------------------------------------


def refusal(statement: duckdb.Statement) -> str | None:
    """Why `statement` may not run here, or None when it only reads."""
    kind = statement.type
    if kind not in _READING_KINDS:
        return f"{READ_ONLY} ({kind.name.replace('_', ' ')} refused)"
    found = _WRITING_CALLS.search(statement.query)
    if found:
        return f"{READ_ONLY} ({' '.join(found.group(0).split())} refused)"
    if kind == duckdb.StatementType.EXPLAIN:
        explained = _EXPLAIN_PREFIX.sub("", statement.query, count=1)
        with suppress(duckdb.Error):
            return next((refusal(inner) for inner in duckdb.extract_statements(explained)), None)
    return None


def split_statements(text: str) -> list[duckdb.Statement]:
    """The statements of `text`, parsed by DuckDB; a parse error or a writing statement is a QueryError."""
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise QueryError(_one_line(exc)) from exc
    for statement in statements:
        refused = refusal(statement)
        if refused:
            raise QueryError(refused)
    return statements


def _run(conn: duckdb.DuckDBPyConnection, statement: duckdb.Statement) -> duckdb.DuckDBPyRelation | None:
    try:
        return conn.sql(statement.query)
    except duckdb.Error as exc:
        raise _as_query_error(exc) from exc


def _as_query_error(exc: duckdb.Error) -> QueryError:
    line = _one_line(exc)
    if "read-only mode" in line or "readonly database" in line:
        return QueryError(f"{READ_ONLY} ({line})")
    return QueryError(line)


def _results(
    conn: duckdb.DuckDBPyConnection, text: str
) -> Iterator[tuple[duckdb.Statement, duckdb.DuckDBPyRelation]]:
    """Each statement of `text` run in turn, with its result when it has one (SET, BEGIN … have none);
    nothing runs when any statement would write."""
    for statement in split_statements(text):
        relation = _run(conn, statement)
        if relation is not None:
            yield statement, relation


def _write(statement: duckdb.Statement, relation: duckdb.DuckDBPyRelation, fmt: Format, out: TextIO) -> None:
    explain = statement.type == duckdb.StatementType.EXPLAIN
    try:
        write_relation(relation, fmt, out, plan=explain)
    except duckdb.Error as exc:  # a SELECT runs (and fails) only now, as its rows are read
        raise _as_query_error(exc) from exc


def execute(conn: duckdb.DuckDBPyConnection, text: str, fmt: Format, out: TextIO) -> None:
    """Every statement of `text` in order, each result written to `out` (a blank line between two);
    nothing runs when any statement would write."""
    for i, (statement, relation) in enumerate(_results(conn, text)):
        if i:
            out.write("\n")
        _write(statement, relation, fmt, out)


def run_query(lake: Lake, query: str, fmt: Format = "table", *, snapshot: int | None = None) -> str:
    """One query on the lake, read-only: its table (or CSV). Raises QueryError / LakeNotCreatedError."""
    out = io.StringIO()
    conn = open_lake(lake, snapshot)
    try:
        execute(conn, query, fmt, out)
    finally:
        conn.close()
    return out.getvalue()


# --- the prompt -----------------------------------------------------------------------------------------


def statement_complete(text: str) -> bool:
    """True when the last thing in `text` outside quotes and comments is a `;`."""
    i, last, n = 0, "", len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            end = text.find(ch, i + 1)
            while end != -1 and text[end + 1 : end + 2] == ch:  # '' and "" escape themselves
                end = text.find(ch, end + 2)
            if end == -1:
                return False
            i, last = end + 1, ch
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                return False
            i = end + 2
        elif ch == "$" and (tag := re.match(r"\$[A-Za-z_]*\$", text[i:])):
            end = text.find(tag.group(0), i + len(tag.group(0)))
            if end == -1:
                return False
            i, last = end + len(tag.group(0)), "$"
        else:
            if not ch.isspace():
                last = ch
            i += 1
    return last == ";"


def _read(stdin: TextIO, prompt: str, interactive: bool) -> str | None:
    """The next line without its newline, or None at end of input."""
    if interactive:
        try:
            return input(prompt)
        except EOFError:
            return None
    line = stdin.readline()
    return None if line == "" else line.rstrip("\n")


def _history(interactive: bool) -> ModuleType | None:
    """Python's readline (line editing and history across sessions) when there is one and a person types."""
    if not interactive:
        return None
    try:
        import readline
    except ImportError:
        return None
    with suppress(OSError):
        readline.read_history_file(HISTORY_FILE)
    readline.set_history_length(1000)
    return readline


def repl(
    conn: duckdb.DuckDBPyConnection,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    *,
    fmt: Format = "table",
    interactive: bool = False,
    prompt: str = f"{LAKE_ALIAS}> ",
) -> int:
    """Read statements (ended by `;`, over as many lines as they take) and dot commands from `stdin`
    until .quit/.exit or its end; answer each on `stdout`, and each error in one line on `stderr`.

    `interactive`: a person types at a terminal: lines come from input() (readline editing and history,
    prompts shown) and errors never change the exit code. Otherwise the exit code is EXIT_USAGE when any
    statement failed (all still run), so a piped script can tell.
    """
    readline = _history(interactive)
    more = " " * max(0, len(prompt) - 5) + "...> "
    failed = False
    buffer: list[str] = []
    try:
        while True:
            try:
                line = _read(stdin, more if buffer else prompt, interactive)
            except KeyboardInterrupt:  # Ctrl-C drops the statement being typed
                buffer = []
                stdout.write("\n")
                continue
            if line is None:
                if interactive:
                    stdout.write("\n")  # leave the terminal on a fresh line after Ctrl-D
                if "\n".join(buffer).strip():
                    failed |= not _answer(conn, "\n".join(buffer), fmt, stdout, stderr)
                break
            if not buffer and line.strip().startswith("."):
                command = line.strip().split()[0].lower()
                if command in (".quit", ".exit", ".q"):
                    break
                failed |= not _dot_command(conn, command, stdout, stderr)
                continue
            buffer.append(line)
            text = "\n".join(buffer)
            if statement_complete(text):
                buffer = []
                failed |= not _answer(conn, text, fmt, stdout, stderr)
    finally:
        if readline is not None:
            with suppress(OSError):
                readline.write_history_file(HISTORY_FILE)
    return EXIT_USAGE if failed and not interactive else EXIT_OK


def _answer(conn: duckdb.DuckDBPyConnection, text: str, fmt: Format, stdout: TextIO, stderr: TextIO) -> bool:
    """Run the statements of `text`, printing results and errors; False when one failed."""
    try:
        for statement, relation in _results(conn, text):
            _write(statement, relation, fmt, stdout)
            if fmt == "table":
                stdout.write("\n")  # a blank line after each table, as psql does
            stdout.flush()
    except QueryError as exc:
        stderr.write(f"error: {exc}\n")
        return False
    except KeyboardInterrupt:
        stderr.write("error: interrupted\n")
        return False
    return True


def _dot_command(conn: duckdb.DuckDBPyConnection, command: str, stdout: TextIO, stderr: TextIO) -> bool:
    if command == ".tables":
        return _answer(conn, TABLES_QUERY, "table", stdout, stderr)
    if command == ".help":
        stdout.write(HELP + "\n")
        return True
    stderr.write(f"error: unknown command {command} (.help lists them)\n")
    return False


# --- the command ----------------------------------------------------------------------------------------


def run_sql_command(
    lake: Lake,
    query: str | None,
    *,
    fmt: Format,
    snapshot: int | None,
    print_attach: bool,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """`usage-pipeline sql`: --print-attach, one query, or the prompt (standard streams unless given).
    Returns the exit code."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    if print_attach:
        if query is not None:
            stderr.write("sql: --print-attach takes no QUERY\n")
            return EXIT_USAGE
        stdout.writelines(f"{line}\n" for line in attach_lines(lake, snapshot))
        if not lake.exists():
            stderr.write(never_created(lake) + "\n")
        if "httpfs" in lake.extensions():
            stderr.write(
                "sql: the data is on S3: create an S3 secret (CREATE SECRET … TYPE s3) before ATTACH\n"
            )
        return EXIT_OK
    if query is not None and not query.strip():
        stderr.write("sql: the QUERY is empty\n")
        return EXIT_USAGE
    try:
        conn = open_lake(lake, snapshot)
    except (LakeNotCreatedError, QueryError) as exc:
        stderr.write(f"{exc}\n")
        return EXIT_USAGE
    try:
        if query is not None:
            execute(conn, query, fmt, stdout)
            return EXIT_OK
        interactive = stdin.isatty()
        where = f"{LAKE_ALIAS}@{snapshot}" if snapshot is not None else LAKE_ALIAS
        if interactive:
            as_of = f" as of snapshot {snapshot}" if snapshot is not None else ""
            stdout.write(f"{lake.describe()}{as_of}, read-only. {HELP.splitlines()[0]} .help for more.\n")
        return repl(conn, stdin, stdout, stderr, fmt=fmt, interactive=interactive, prompt=f"{where}> ")
    except QueryError as exc:
        stderr.write(f"sql: {exc}\n")
        return EXIT_USAGE
    finally:
        conn.close()
