"""A PostgreSQL server for the tests, found or started, and a fresh schema per store.

In order: LITEQ_TEST_POSTGRES (a DSN); a server answering on 127.0.0.1:5432 (user
postgres, database test or postgres); a throwaway cluster started with Debian's PostgreSQL
binaries (initdb in a temporary directory, a free port, stopped when the tests end). With
none of them the PostgreSQL tests are skipped, saying why, unless LITEQ_REQUIRE_POSTGRES=1
(CI sets it), which makes that a failure.

On a server they are given, tests touch only what they made: a schema of new_schema()'s
(dropped when the test ends), and sessions they named with new_name() (the only ones a test
may end). A server is stopped or restarted only if it is a Cluster of the test's own.
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
import threading
from pathlib import Path
from typing import Final
from urllib.parse import quote

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


def new_name() -> str:
    """An application_name no other test or test run uses: a test ends only its own sessions
    (`pg_terminate_backend` of those named so), never a bystander's."""
    return f"liteq-test-{os.getpid()}-{secrets.token_hex(4)}"


def with_params(url: str, **params: str) -> str:
    """`url` with these libpq parameters added to its query string."""
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def terminate(application_name: str) -> int:
    """End every session named `application_name` (one a test named itself: new_name());
    how many there were."""
    dsn = dsn_or_skip()
    with psycopg.connect(dsn, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchall()
    return len(ended)


#: The codes of the requests a client may send before its startup message (SSL, GSSAPI).
_PRE_STARTUP: Final = {80877103, 80877104}


def _first_parameter(bind: bytes) -> bytes | None:
    """The first parameter's value in a Bind frame's body (None for NULL)."""
    at = bind.index(b"\0", bind.index(b"\0") + 1) + 1  # past the portal and statement
    formats = int.from_bytes(bind[at : at + 2], "big")
    at += 2 + 2 * formats + 2  # past the formats and the count of parameters
    size = int.from_bytes(bind[at : at + 4], "big", signed=True)
    return None if size < 0 else bind[at + 4 : at + 4 + size]


class LosesACommitReply:
    """A TCP proxy to the test server that loses the reply to one commit.

    The first COMMIT (on any connection through it) of a transaction that completed a job
    (a fenced `UPDATE … finished_at` or a fenced `DELETE` of a run; any write of a whole row
    too, as a failure's), or the first call of the function complete_and_claim that
    completes jobs (it commits on its own), is passed to the server; once the server has
    answered, the proxy closes both sides instead of passing the answer on. The commit went through; the client
    cannot know it. `lost` is set when it has. With `claiming`, only a transaction that also
    claimed jobs (a worker's `complete_and_claim`) has its reply lost.
    """

    def __init__(self, dsn: str, *, claiming: bool = False) -> None:
        self._claiming = claiming
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        self._to = (str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        user, password = params.get("user") or "postgres", params.get("password")
        login = quote(str(user)) + (f":{quote(str(password))}" if password else "")
        self.url = (
            f"postgresql://{login}@127.0.0.1:{self.port}/{quote(str(params.get('dbname') or user))}"
        )
        self.lost = threading.Event()
        self._once = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self._to)
            swallow = threading.Event()
            threading.Thread(target=self._up, args=(client, server, swallow), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, swallow), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, swallow: threading.Event) -> None:
        """Client to server, reading the frames to know which statement each Bind runs."""
        buf, started, armed, claimed = b"", False, False, False
        statements: dict[bytes, bytes] = {}
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                buf += chunk
                while True:
                    if not started:  # untyped: length, then a code
                        if len(buf) < 8 or len(buf) < int.from_bytes(buf[:4], "big"):
                            break
                        size = int.from_bytes(buf[:4], "big")
                        started = int.from_bytes(buf[4:8], "big") not in _PRE_STARTUP
                        buf = buf[size:]
                        continue
                    if len(buf) < 5 or len(buf) < 1 + int.from_bytes(buf[1:5], "big"):
                        break
                    kind, size = buf[:1], int.from_bytes(buf[1:5], "big")
                    body, buf = buf[5 : 1 + size], buf[1 + size :]
                    query = None
                    if kind == b"P":  # Parse: name, query
                        name, text = body.split(b"\0")[:2]
                        statements[name] = text
                    elif kind == b"B":  # Bind: portal, statement, then parameters
                        query = statements.get(body.split(b"\0")[1], b"")
                        if b"complete_and_claim(" in query and _first_parameter(body) != b"{}":
                            # Completions and a claim, committed on their own: as a COMMIT.
                            if self._once.acquire(blocking=False):
                                swallow.set()
                            query = None
                    elif kind == b"Q":  # a simple query
                        query = body.rstrip(b"\0")
                    if query is None:
                        continue
                    verb = query.strip().upper()
                    if verb in (b"BEGIN", b"ROLLBACK"):  # a transaction of its own
                        armed = claimed = False
                    elif b"finished_at = $" in query or (
                        query.startswith(b"DELETE") and b"owner = $" in query
                    ):
                        armed = True
                    elif b"SKIP LOCKED" in query and b"status = 'running'" in query:
                        claimed = True  # the claim (see queries.sql)
                    elif verb == b"COMMIT":
                        losing = armed and (claimed or not self._claiming)
                        if losing and self._once.acquire(blocking=False):
                            swallow.set()  # before the server can have the COMMIT
                        armed = claimed = False
                # Sent once read: a frame not yet whole is judged when its end comes, still
                # before the server has all of it (and so before it can run it).
                server.sendall(chunk)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)  # the client has gone: so is its session

    def _down(self, server: socket.socket, client: socket.socket, swallow: threading.Event) -> None:
        """Server to client, until the reply to the lost commit: read up to its end (the
        ReadyForQuery frame), then close both sides without passing it on."""
        held = b""
        with contextlib.suppress(OSError):
            while chunk := server.recv(65536):
                if not swallow.is_set():
                    client.sendall(chunk)
                    continue
                held += chunk
                while len(held) >= 5:
                    size = int.from_bytes(held[1:5], "big")
                    if len(held) < 1 + size:
                        break
                    if held[:1] == b"Z":
                        self.lost.set()
                        for side in (client, server):
                            with contextlib.suppress(OSError):
                                side.shutdown(socket.SHUT_RDWR)
                            side.close()
                        return
                    held = held[1 + size :]
        for side in (client, server):
            side.close()
