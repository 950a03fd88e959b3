"""Opening the DuckDB file: one writer process at a time, so a busy file is waited for, aloud, then named."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import duckdb

from usage_pipeline.core.storage.schema import ensure_schema

Log = Callable[[str], None]

# While waiting for the file lock: say so at once, then every this many seconds.
WAIT_REPORT_SECONDS = 30.0


class DuckDBBusyError(RuntimeError):
    """Another process kept the DuckDB file locked for longer than we were willing to wait."""


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _connect_waiting(
    path: str,
    timeout_seconds: float,
    *,
    read_only: bool = False,
    log: Log | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> duckdb.DuckDBPyConnection:
    """Connect, retrying while another process holds the file lock, for at most `timeout_seconds`.

    A step that waits must not be silent: the first refusal is logged with what holds us up, then a line
    every WAIT_REPORT_SECONDS with how long it has been.
    """
    started = clock()
    next_report = started
    delay = 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config={"custom_user_agent": "usage_pipeline"})
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise
            waited = clock() - started
            if waited >= timeout_seconds:
                raise DuckDBBusyError(
                    f"DuckDB: the file {path} is still locked by another process after {waited:.0f} s "
                    "(another ingest or close, or an analyst's open session?); "
                    f"USAGE_DUCKDB_LOCK_TIMEOUT allows {timeout_seconds:.0f} s: {_first_line(exc)}"
                ) from exc
            if log is not None and clock() >= next_report:
                if waited < 1.0:
                    log(
                        f"waiting for the DuckDB file {path}: it is locked by another process "
                        f"({_first_line(exc)}); waiting up to {timeout_seconds:.0f} s"
                    )
                else:
                    log(f"still waiting for the DuckDB file {path} after {waited:.0f} s")
                next_report = clock() + WAIT_REPORT_SECONDS
            time.sleep(min(delay, max(0.0, timeout_seconds - waited)))
            delay = min(delay * 2, 2.0)


def open_database(
    path: str, lock_timeout_seconds: float = 600.0, log: Log | None = None
) -> duckdb.DuckDBPyConnection:
    """Connect read-write, waiting while another process holds the file lock; ensures the schema."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = _connect_waiting(path, lock_timeout_seconds, log=log)
    ensure_schema(conn)
    return conn


@contextmanager
def connect(
    path: str, lock_timeout_seconds: float = 600.0, log: Log | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = open_database(path, lock_timeout_seconds, log)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def read_only(path: str, lock_timeout_seconds: float) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A read-only connection, or None when the file does not exist yet (nothing was ever written).

    Raises DuckDBBusyError when a writer keeps the file past the timeout: the caller decides whether that
    is worth waiting for (a sensor tick is not; it looks again next tick).
    """
    if path != ":memory:" and not Path(path).exists():
        yield None
        return
    conn = _connect_waiting(path, lock_timeout_seconds, read_only=True)
    try:
        yield conn
    finally:
        conn.close()


def has_table(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = conn.execute(
        "SELECT 1 FROM duckdb_tables() WHERE table_name = $name AND schema_name = 'main'", {"name": name}
    ).fetchall()
    return bool(rows)


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT, or ROLLBACK on any exception (KeyboardInterrupt included): all or nothing."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def scratch(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A transaction that is always rolled back: a throw-away workspace of TEMP tables."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")


@contextmanager
def registered(conn: duckdb.DuckDBPyConnection, relations: Mapping[str, object]) -> Iterator[None]:
    """Each relation (an Arrow table or polars frame) visible to SQL under its name for the block."""
    for name, relation in relations.items():
        conn.register(name, relation)
    try:
        yield
    finally:
        for name in relations:
            conn.unregister(name)
