"""The one place that knows where the data lives: a DuckLake lake (SPEC section 5).

Metadata sits in a SQL catalog (SQLite by default, Postgres for many machines, a DuckDB file for one
process), data as Parquet files under a folder or an S3 prefix. Every stage opens it here; nothing else
knows the catalog, the data path or the extensions. The extensions come from the pinned
`duckdb-extension-*` wheels and are loaded by path with signature checking on: nothing is downloaded.

Writers: DuckLake commits optimistically. On a SQLite or DuckDB-file catalog two overlapping write
transactions cannot both commit ("database is locked"); on a Postgres catalog two transactions that
insert the same rows both commit. So writers take turns for each write transaction (never while reading
S3 or parsing): through a lock file beside a file catalog (one machine), or through an advisory lock in
the Postgres catalog's own database (many machines; the server releases it when a worker dies). A
transaction decides from what it reads inside its turn (the ledger, above all), so two writers given the
same file version store it once. A commit that still fails on a busy catalog or a conflict is retried
whole, with a bounded, logged wait.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import duckdb
from filelock import FileLock, Timeout

if TYPE_CHECKING:
    import psycopg2.extensions

Log = Callable[[str], None]
T = TypeVar("T")

LAKE_ALIAS = "lake"
# While waiting for the catalog: say so at once, then every this many seconds.
WAIT_REPORT_SECONDS = 30.0
CATALOG_KINDS = ("sqlite", "postgres", "duckdb")

_EXTENSION_PACKAGES = {
    "ducklake": "duckdb_extension_ducklake",
    "sqlite_scanner": "duckdb_extension_sqlite_scanner",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    "httpfs": "duckdb_extension_httpfs",
}
_RETRYABLE = ("database is locked", "conflict", "could not serialize", "deadlock detected")


class LakeBusyError(RuntimeError):
    """The lake's catalog stayed busy (or kept conflicting) for longer than we were willing to wait."""


class LakeConfigError(ValueError):
    """USAGE_LAKE / USAGE_LAKE_DATA cannot be used as given."""


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def extension_path(name: str) -> str:
    """The extension file shipped in its `duckdb-extension-<name>` wheel, for this DuckDB version."""
    package = _EXTENSION_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    version = duckdb.__version__
    for folder in locations:
        found = glob.glob(os.path.join(folder, "extensions", f"v{version}", f"{name}.duckdb_extension"))
        if found:
            return found[0]
    raise LakeConfigError(
        f"DuckDB extension {name!r} for DuckDB {version} is not installed "
        f"(pip install {package.replace('_', '-')}=={version}; the project pins it)"
    )


@dataclass(frozen=True)
class Lake:
    """Where the lake is: its catalog (`sqlite:PATH`, `postgres:<libpq string>`, `duckdb:PATH`) and its
    data path (a folder or `s3://bucket/prefix/`), and how long a writer waits on a busy catalog."""

    catalog: str = "sqlite:data/usage.sqlite"
    data_path: str = "data/lake/"
    busy_timeout_seconds: float = 600.0
    # httpfs secret for an s3:// data path (endpoint, region, keys): never logged.
    s3_secret: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind, sep, location = self.catalog.partition(":")
        if not sep or kind not in CATALOG_KINDS or not location.strip():
            raise LakeConfigError(
                f"USAGE_LAKE={self.catalog!r}: expected sqlite:PATH, postgres:<connection string> "
                "or duckdb:PATH"
            )

    @property
    def kind(self) -> str:
        return self.catalog.partition(":")[0]

    @property
    def location(self) -> str:
        """The catalog's file (absolute) or connection string."""
        location = self.catalog.partition(":")[2].strip()
        return location if self.kind == "postgres" else str(Path(location).expanduser().absolute())

    @property
    def data_location(self) -> str:
        if "://" in self.data_path:
            return self.data_path if self.data_path.endswith("/") else self.data_path + "/"
        return str(Path(self.data_path).expanduser().absolute()) + os.sep

    @property
    def is_file_catalog(self) -> bool:
        return self.kind in ("sqlite", "duckdb")

    def describe(self) -> str:
        """How messages name the lake: the catalog as configured, never a password."""
        if self.kind == "postgres":
            words = [w for w in self.location.split() if not w.lower().startswith("password=")]
            return "postgres:" + " ".join(words)
        return f"{self.kind}:{self.location}"

    def exists(self) -> bool:
        """False when the catalog was never created (nothing was ever written). A Postgres catalog is
        asked (an unreachable server raises, naming itself)."""
        if self.is_file_catalog:
            return Path(self.location).exists()
        import psycopg2

        pg = psycopg2.connect(self.location, connect_timeout=10)
        try:
            with pg.cursor() as cursor:
                cursor.execute("SELECT to_regclass('ducklake_metadata') IS NOT NULL")
                row = cursor.fetchone()
        finally:
            pg.close()
        return bool(row and row[0])

    @property
    def turn_key(self) -> int:
        """The advisory lock id of this lake's write turn in a Postgres catalog (one per data path)."""
        digest = hashlib.sha256(f"usage_pipeline write turn {self.data_location}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def attach_sql(self, *, read_only: bool = False) -> str:
        """The ATTACH statement for this lake, as an analyst's DuckDB client would run it."""
        if self.kind == "duckdb":
            target = f"ducklake:{self.location}"
        else:
            target = f"ducklake:{self.kind}:{self.location}"
        options = [f"DATA_PATH {_quote(self.data_location)}"]
        if self.kind == "sqlite":
            options += ["META_JOURNAL_MODE 'WAL'", "META_BUSY_TIMEOUT 10000"]
        if read_only:
            options.append("READ_ONLY")
        return f"ATTACH {_quote(target)} AS {LAKE_ALIAS} ({', '.join(options)})"

    def extensions(self) -> list[str]:
        needed = ["ducklake"]
        if self.kind == "sqlite":
            needed.append("sqlite_scanner")
        elif self.kind == "postgres":
            needed.append("postgres_scanner")
        if self.data_location.startswith(("s3://", "http://", "https://")):
            needed.append("httpfs")
        return needed


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sql_strings(texts: Iterable[str]) -> str:
    """A SQL list literal of these strings, each quoted: for a view, which cannot take parameters."""
    return "[" + ", ".join(_quote(t) for t in texts) + "]"


def is_retryable(exc: BaseException) -> bool:
    """A commit that failed because another writer got there first: worth doing again, whole."""
    if isinstance(exc, TurnLostError):
        return True
    if not isinstance(exc, duckdb.Error):
        return False
    text = str(exc).lower()
    return any(marker in text for marker in _RETRYABLE)


class _PostgresTurn:
    """The lake's write turn as a session advisory lock in the Postgres catalog's database: held by one
    writer at a time across machines, released by the server when the holder's connection ends (a
    killed worker never blocks the others)."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._pg: psycopg2.extensions.connection | None = None

    def _query(self, statement: str, params: tuple[int, ...]) -> object:
        import psycopg2

        if self._pg is None or self._pg.closed:
            self._pg = psycopg2.connect(self.lake.location, connect_timeout=10)
            self._pg.autocommit = True
        with self._pg.cursor() as cursor:
            cursor.execute(statement, params)
            row = cursor.fetchone()
        return row[0] if row else None

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._query("SELECT pg_try_advisory_lock(%s)", (self.lake.turn_key,)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def still_held(self) -> bool:
        """True while this session holds the turn (checked just before a COMMIT)."""
        key = self.lake.turn_key & 0xFFFFFFFFFFFFFFFF  # a bigint lock shows as two unsigned 32-bit oids
        held = self._query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s",
            (key >> 32, key & 0xFFFFFFFF),
        )
        return bool(held)

    def release(self) -> None:
        if self._pg is not None and not self._pg.closed:
            self._query("SELECT pg_advisory_unlock(%s)", (self.lake.turn_key,))

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None


@dataclass
class _Writer:
    """What a writing connection needs to take its turn: the lake, its lock, the log."""

    lake: Lake
    lock: FileLock | _PostgresTurn | None
    log: Log | None


# Writing connections opened by `connect`, by id: `transact` finds its lake, lock and log there.
_WRITERS: dict[int, _Writer] = {}
_WRITERS_LOCK = threading.Lock()


def _new_connection() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "custom_user_agent": "usage_pipeline",
            # Where a capped write (a big file) spills: the system's temp folder, one per process, not
            # DuckDB's default `.tmp` in whatever folder the process was started from.
            "temp_directory": os.path.join(tempfile.gettempdir(), f"usage_pipeline-duckdb-{os.getpid()}"),
        },
    )
    conn.execute("SET enable_progress_bar = false")  # never a progress bar in a run's log or CLI output
    return conn


def _load_extensions(conn: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    for name in lake.extensions():
        conn.execute(f"LOAD {_quote(extension_path(name))}")
    if "httpfs" in lake.extensions() and lake.s3_secret:
        options = ", ".join(f"{key} {_quote(value)}" for key, value in lake.s3_secret.items())
        conn.execute(f"CREATE OR REPLACE SECRET usage_lake_s3 (TYPE s3, {options})")


_CHECKED_DATA_PATHS: set[str] = set()


def _check_s3_data_path(lake: Lake) -> None:
    """An s3:// data path whose bucket is missing or refuses us fails here, naming it, before anything is
    written (DuckDB would only find out when a commit writes its first Parquet file)."""
    location = lake.data_location
    if not location.startswith("s3://") or location in _CHECKED_DATA_PATHS:
        return
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    secret = lake.s3_secret
    endpoint = secret.get("ENDPOINT")
    scheme = "https" if secret.get("USE_SSL", "true") == "true" else "http"
    client = boto3.client(
        "s3",
        endpoint_url=f"{scheme}://{endpoint}" if endpoint else None,
        region_name=secret.get("REGION"),
        aws_access_key_id=secret.get("KEY_ID"),
        aws_secret_access_key=secret.get("SECRET"),
        aws_session_token=secret.get("SESSION_TOKEN"),
    )
    bucket = location.removeprefix("s3://").split("/", 1)[0]
    where = f"{scheme}://{endpoint}" if endpoint else "AWS"
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        problem = {404: "does not exist", 403: "refuses access (403)"}.get(status, f"answered {status}")
        raise LakeConfigError(
            f"S3 (lake data): bucket {bucket!r} {problem} at {where} "
            "(check USAGE_LAKE_DATA, AWS_ENDPOINT_URL_S3 and the S3 credentials)"
        ) from exc
    except BotoCoreError as exc:
        raise LakeConfigError(
            f"S3 (lake data): cannot reach {where} for bucket {bucket!r}: {exc} "
            "(check AWS_ENDPOINT_URL_S3 and USAGE_LAKE_DATA)"
        ) from exc
    _CHECKED_DATA_PATHS.add(location)


def _prepare_file_catalog(lake: Lake) -> None:
    """A new SQLite catalog starts in WAL mode (readers and the writer do not stall each other)."""
    path = Path(lake.location)
    path.parent.mkdir(parents=True, exist_ok=True)
    if lake.kind == "sqlite" and not path.exists():
        import sqlite3

        with sqlite3.connect(path) as sqlite:
            sqlite.execute("PRAGMA journal_mode=WAL")
    if "://" not in lake.data_location:
        Path(lake.data_location).mkdir(parents=True, exist_ok=True)


class _Waiting:
    """Bounded, logged waiting: the first wait is said at once, then every WAIT_REPORT_SECONDS."""

    def __init__(self, lake: Lake, what: str, log: Log | None) -> None:
        self.lake, self.what, self.log = lake, what, log
        self.started = time.monotonic()
        self.next_report = self.started
        self.delay = 0.05

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def pause(self, reason: str) -> None:
        """Sleep before the next try, or raise LakeBusyError once the timeout is spent."""
        waited = self.elapsed()
        timeout = self.lake.busy_timeout_seconds
        if waited >= timeout:
            raise LakeBusyError(
                f"DuckLake: the catalog {self.lake.describe()} stayed busy for {waited:.0f} s while "
                f"{self.what} ({reason}); USAGE_LAKE_BUSY_TIMEOUT allows {timeout:.0f} s"
            )
        if self.log is not None and time.monotonic() >= self.next_report:
            if waited < 1.0:
                self.log(
                    f"waiting for the lake catalog {self.lake.describe()} while {self.what}: {reason}; "
                    f"waiting up to {timeout:.0f} s"
                )
            else:
                self.log(f"still waiting for the lake catalog after {waited:.0f} s ({reason})")
            self.next_report = time.monotonic() + WAIT_REPORT_SECONDS
        time.sleep(min(self.delay * (0.5 + random.random()), max(0.0, timeout - waited)))
        self.delay = min(self.delay * 2, 2.0)


def _attach(conn: duckdb.DuckDBPyConnection, lake: Lake, *, read_only: bool, log: Log | None) -> None:
    waiting = _Waiting(lake, "attaching", log)
    while True:
        try:
            conn.execute(lake.attach_sql(read_only=read_only))
            conn.execute(f"USE {LAKE_ALIAS}")
            return
        except duckdb.Error as exc:
            if not is_retryable(exc):
                raise
            waiting.pause(_first_line(exc))


def _write_lock(lake: Lake) -> FileLock | _PostgresTurn:
    if lake.kind == "postgres":
        return _PostgresTurn(lake)
    return FileLock(lake.location + ".write-lock", thread_local=False)


def open_lake(lake: Lake, *, log: Log | None = None) -> duckdb.DuckDBPyConnection:
    """A writing connection to the lake, its schema ensured. Close it with `close`."""
    from usage_pipeline.core.storage.schema import ensure_schema, missing_schema

    if lake.is_file_catalog:
        _prepare_file_catalog(lake)
    _check_s3_data_path(lake)
    conn = _new_connection()
    try:
        _load_extensions(conn, lake)
        with _WRITERS_LOCK:
            _WRITERS[id(conn)] = _Writer(lake, _write_lock(lake), log)
        with _turn(conn, "attaching"):  # the first attach creates the catalog's own tables
            _attach(conn, lake, read_only=False, log=log)
        if missing_schema(conn):
            transact(conn, lambda: ensure_schema(conn), what="creating the lake's tables")
    except BaseException:
        close(conn)
        raise
    return conn


def close(conn: duckdb.DuckDBPyConnection) -> None:
    with _WRITERS_LOCK:
        writer = _WRITERS.pop(id(conn), None)
    if writer is not None and isinstance(writer.lock, _PostgresTurn):
        writer.lock.close()
    conn.close()


@contextmanager
def connect(lake: Lake, log: Log | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = open_lake(lake, log=log)
    try:
        yield conn
    finally:
        close(conn)


def open_read_only(lake: Lake) -> duckdb.DuckDBPyConnection | None:
    """A read-only connection, or None when the catalog was never created. Never blocks a writer."""
    if not lake.exists():
        return None
    conn = _new_connection()
    try:
        _load_extensions(conn, lake)
        _attach(conn, lake, read_only=True, log=None)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def read_only(lake: Lake) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A read-only connection for the block, or None when nothing was ever written."""
    conn = open_read_only(lake)
    try:
        yield conn
    finally:
        if conn is not None:
            conn.close()


@contextmanager
def _turn(conn: duckdb.DuckDBPyConnection, what: str) -> Iterator[None]:
    """This writer's turn (other writers wait, aloud): the lock file of a file catalog, the advisory lock
    of a Postgres catalog."""
    writer = _WRITERS.get(id(conn))
    if writer is None or writer.lock is None:
        yield
        return
    waiting = _Waiting(writer.lake, what, writer.log)
    step = min(5.0, max(0.0, writer.lake.busy_timeout_seconds))
    while True:
        try:
            if writer.lock.acquire(timeout=step) is not False:
                break
        except Timeout:
            pass
        waiting.pause("another writer has its turn")
    try:
        yield
    finally:
        writer.lock.release()


class TurnLostError(RuntimeError):
    """The Postgres session holding the write turn ended before the commit (its server or network)."""


def _check_turn(writer: _Writer | None) -> None:
    """A Postgres turn is a session lock: if its connection dropped, another writer may have the turn
    now, so this transaction must not commit (it is rolled back and run again in a new turn)."""
    if writer is not None and isinstance(writer.lock, _PostgresTurn):
        try:
            held = writer.lock.still_held()
        except Exception as exc:
            raise TurnLostError(f"the write turn's Postgres session failed before the commit: {exc}") from exc
        if not held:
            raise TurnLostError("the write turn's Postgres session lost its lock before the commit")


def _rollback(conn: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # a failed COMMIT leaves no transaction behind
        conn.execute("ROLLBACK")


def transact(conn: duckdb.DuckDBPyConnection, body: Callable[[], T], *, what: str = "writing") -> T:
    """Run `body` in one transaction and commit it: all or nothing.

    When the commit fails because another writer committed first (a busy catalog, a conflict), the
    whole body runs again in a new transaction, so what it read is read afresh: a body must decide from
    what it reads inside the transaction. Waits are bounded by USAGE_LAKE_BUSY_TIMEOUT and logged.
    """
    writer = _WRITERS.get(id(conn))
    waiting = _Waiting(writer.lake, what, writer.log) if writer else None
    while True:
        with _turn(conn, what):
            conn.execute("BEGIN TRANSACTION")
            try:
                result = body()
                _check_turn(writer)
                conn.execute("COMMIT")
                return result
            except BaseException as exc:
                _rollback(conn)
                if waiting is None or not is_retryable(exc):
                    raise
                reason = _first_line(exc)
        waiting.pause(reason)


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT in this process's turn, or ROLLBACK on any exception; not retried (see `transact`)."""
    with _turn(conn, "writing"):
        conn.execute("BEGIN TRANSACTION")
        try:
            yield conn
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")


@contextmanager
def scratch(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A transaction that is always rolled back: a throw-away workspace of TEMP tables over one snapshot."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    finally:
        _rollback(conn)


@contextmanager
def registered(conn: duckdb.DuckDBPyConnection, relations: Mapping[str, object]) -> Iterator[None]:
    """Each relation (an Arrow table or polars frame) visible to SQL under its name for the block."""
    for name, relation in relations.items():
        conn.register(name, _scannable(relation))
    try:
        yield
    finally:
        for name in relations:
            conn.unregister(name)


@contextmanager
def memory_limited(conn: duckdb.DuckDBPyConnection, limit: str) -> Iterator[None]:
    """DuckDB's memory limit lowered to `limit` (e.g. "1GB") for the block, then set back: a big join or
    sort then spills to DuckDB's temporary directory instead of growing the process."""
    (before,) = conn.execute("SELECT current_setting('memory_limit')").fetchone()  # type: ignore[misc]
    conn.execute(f"SET memory_limit = {_quote(limit)}")
    try:
        yield
    finally:
        conn.execute("RESET memory_limit")  # the exact default (its text form is rounded)
        (now,) = conn.execute("SELECT current_setting('memory_limit')").fetchone()  # type: ignore[misc]
        if now != before:
            conn.execute(f"SET memory_limit = {_quote(before)}")


def _scannable(relation: object) -> object:
    """Arrow string views (polars' own layout) as plain Arrow strings: DuckDB 1.5.5 cannot filter or join
    string views it scans ("array_filter has no kernel matching string_view")."""
    import polars as pl
    import pyarrow as pa

    if isinstance(relation, pl.DataFrame):
        return relation.to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(relation, pa.Table) and any(pa.types.is_string_view(t) for t in relation.schema.types):
        schema = pa.schema(
            [
                f.with_type(pa.large_string()) if pa.types.is_string_view(f.type) else f
                for f in relation.schema
            ]
        )
        return relation.cast(schema)
    return relation


def has_table(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = conn.execute(
        "SELECT 1 FROM duckdb_tables() WHERE table_name = $name AND schema_name = 'main' "
        "AND database_name = current_database()",
        {"name": name},
    ).fetchall()
    return bool(rows)


def lake_snapshot(conn: duckdb.DuckDBPyConnection) -> int | None:
    """The lake snapshot the connection reads (in a transaction: the transaction's; outside one: the
    latest); None on a connection without the lake attached (a plain DuckDB file)."""
    rows = conn.execute(
        "SELECT count(*) FROM duckdb_databases() WHERE database_name = $alias", {"alias": LAKE_ALIAS}
    ).fetchall()
    return current_snapshot(conn) if rows[0][0] else None


def current_snapshot(conn: duckdb.DuckDBPyConnection) -> int:
    """The id of the lake snapshot this connection's transaction reads."""
    return int(conn.execute(f"SELECT * FROM {LAKE_ALIAS}.current_snapshot()").fetchall()[0][0])
