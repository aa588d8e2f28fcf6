"""A PostgreSQL server for the tests, found or started, and a fresh schema per store.

In order: LITEQ_TEST_POSTGRES (a DSN); a server answering on 127.0.0.1:5432 (user
postgres, database test or postgres); a throwaway cluster started with Debian's PostgreSQL
binaries (initdb in a temporary directory, a free port, stopped when the tests end). With
none of them the PostgreSQL tests are skipped, saying why, unless LITEQ_REQUIRE_POSTGRES=1
(CI sets it), which makes that a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

HOW = (
    "no PostgreSQL server for the tests: set LITEQ_TEST_POSTGRES=postgresql://…, run one on "
    "127.0.0.1:5432 (user postgres, trust), or apt-get install postgresql"
)


def _answers(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A PostgreSQL cluster of the tests' own, made with Debian's binaries in a temporary
    directory and listening on a free port of 127.0.0.1: one they may restart or stop."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise OSError("no PostgreSQL binaries (apt-get install postgresql)")
        self._bin = Path(found[-1]).parent
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            pwd.getpwnam("postgres")  # KeyError: no such user to run it as
            self._as = ["runuser", "-u", "postgres", "--"]
        self.home = Path(tempfile.mkdtemp(prefix="liteq-pg-"))
        if self._as:
            shutil.chown(self.home, "postgres")
        self.data, self.port = self.home / "data", _free_port()
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust")
        self.start()
        atexit.register(self.remove)
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(self._bin / tool), *args], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.home / "log")
        self._pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.home, ignore_errors=True)


def new_cluster() -> Cluster:
    """A cluster of the test's own; skips the test (fails it under LITEQ_REQUIRE_POSTGRES)
    if one cannot be made here."""
    try:
        return Cluster()
    except (OSError, KeyError, subprocess.CalledProcessError) as exc:
        reason = f"cannot start a PostgreSQL cluster of the tests' own: {exc}"
        if os.environ.get("LITEQ_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (LITEQ_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)


@functools.cache
def server() -> str | None:
    """The DSN of a server the tests may use, or None."""
    given = os.environ.get("LITEQ_TEST_POSTGRES")
    if given:
        return given if _answers(given) else None
    for dsn in (
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://postgres@127.0.0.1:5432/postgres",
    ):
        if _answers(dsn):
            return dsn
    try:
        return Cluster().dsn
    except (OSError, KeyError, subprocess.CalledProcessError):
        return None


def dsn_or_skip() -> str:
    """The server's DSN; skips the test (fails it under LITEQ_REQUIRE_POSTGRES) if none."""
    dsn = server()
    if dsn is None:
        if os.environ.get("LITEQ_REQUIRE_POSTGRES") == "1":
            pytest.fail(HOW + " (LITEQ_REQUIRE_POSTGRES=1)")
        pytest.skip(HOW)
    return dsn


def new_schema() -> str:
    """A schema name no other test or test run uses."""
    return f"t{os.getpid()}_{secrets.token_hex(4)}"


def url(schema: str) -> str:
    """A liteq URL for the test server and this schema."""
    dsn = dsn_or_skip()
    return f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"


def drop_schema(schema: str) -> None:
    """Drop a test's schema and everything in it."""
    dsn = server()
    if dsn is None:
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())
