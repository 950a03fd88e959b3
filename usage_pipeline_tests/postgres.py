"""A throwaway PostgreSQL server on loopback for the tests that need one: its own cluster in a temp folder
(never the system service's data), started once per test session and stopped at its end.

The server binaries come from Debian's `postgresql` package (`.ci/run` installs it). Where they cannot be
found, the tests that need the server are skipped with the reason; nothing else is.
"""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"  # the OS user the server runs as when the tests run as root


def _binaries() -> Path | None:
    """The folder of initdb / pg_ctl / postgres: $USAGE_TEST_PG_BIN, else Debian's newest version."""
    configured = os.environ.get("USAGE_TEST_PG_BIN")
    if configured:
        return Path(configured)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None when one can."""
    folder = _binaries()
    if folder is None or not (folder / "initdb").exists() or not (folder / "pg_ctl").exists():
        return (
            "PostgreSQL server binaries not found (install Debian's `postgresql` package, as .ci/run does, "
            "or set USAGE_TEST_PG_BIN)"
        )
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no '{SERVER_USER}' OS user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def dsn(self, database: str = "postgres", **extra: str) -> str:
        """A libpq key=value connection string."""
        fields = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "password": self.password,
            "dbname": database,
            **extra,
        }
        return " ".join(f"{k}={v}" for k, v in fields.items())

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str = "lake") -> str:
        """A new empty database; returns its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def sql(self, statement: str, database: str = "postgres") -> str:
        import psycopg2

        conn = psycopg2.connect(self.dsn(database))
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
                return "" if cursor.description is None else str(cursor.fetchall())
        finally:
            conn.close()


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a cluster in a new temp folder on a free loopback port (password auth), stop and remove it."""
    folder = _binaries()
    assert folder is not None
    root = Path(tempfile.mkdtemp(prefix="usage-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    password = uuid.uuid4().hex
    (root / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER)
        shutil.chown(sockets, SERVER_USER)
        shutil.chown(root / "pw", SERVER_USER)
    user = "usage" if os.geteuid() == 0 else getpass.getuser()
    port = _free_port()
    subprocess.run(
        _as_server_user(
            [
                str(folder / "initdb"),
                "-D",
                str(data),
                "-U",
                user,
                "--pwfile",
                str(root / "pw"),
                "-A",
                "scram-sha-256",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = (
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 "
        "-c synchronous_commit=off"
    )
    subprocess.run(
        _as_server_user(
            [str(folder / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    server = PostgresServer("127.0.0.1", port, user, password)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.sql("SELECT 1")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        subprocess.run(
            _as_server_user([str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
