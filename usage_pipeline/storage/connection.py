"""Opening the DuckDB file: one writer process at a time, so a busy file is waited for, then named."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from usage_pipeline.storage.schema import ensure_schema


class DuckDBBusyError(RuntimeError):
    """Another process kept the DuckDB file locked for longer than we were willing to wait."""


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def open_database(path: str, lock_timeout_seconds: float = 600.0) -> duckdb.DuckDBPyConnection:
    """Connect read-write, retrying while another process holds the file lock; ensures the schema."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    retrying = Retrying(
        retry=retry_if_exception(_is_lock_error),
        stop=stop_after_delay(lock_timeout_seconds),
        wait=wait_random_exponential(multiplier=0.05, max=2.0),
        reraise=True,
    )
    try:
        conn = retrying(duckdb.connect, path, config={"custom_user_agent": "usage_pipeline"})
    except duckdb.IOException as exc:
        if not _is_lock_error(exc):
            raise
        raise DuckDBBusyError(
            f"DuckDB file {path} is still locked by another process after {lock_timeout_seconds:.0f} s "
            f"(another ingest, close or an open analyst session?): {exc}"
        ) from exc
    ensure_schema(conn)
    return conn


@contextmanager
def connect(path: str, lock_timeout_seconds: float = 600.0) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = open_database(path, lock_timeout_seconds)
    try:
        yield conn
    finally:
        conn.close()
