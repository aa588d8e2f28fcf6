"""The queue file's schema: its version, the migrations to it, and which files are queues.

`schema.sql` (at the top of the repository, shipped inside the wheel) is the schema's one
source of truth; `migrations/NN_*.sql` take a file of version NN-1 to version NN.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Final

import apsw

from liteq.errors import StoreError
from liteq.stores.sqlite import queries
from liteq.stores.sqlshared import numbered_scripts

#: The schema version this code writes; older files are migrated on open.
SCHEMA_VERSION: Final = 14


def schema_sql() -> str:
    """The text of schema.sql (inside the wheel, or at the top of a checkout)."""
    packaged = importlib.resources.files("liteq").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[3] / "schema.sql").read_text(encoding="utf-8")


#: Migrations from version N to N+1, applied in order inside one transaction.
MIGRATIONS: Final[dict[int, str]] = numbered_scripts(__package__)


#: Where a shared file (an application's database) keeps liteq's schema version: the
#: file's user_version is the application's, which some keep their own version in.
SHARED_VERSION: Final = "liteq_version"


def read(conn: apsw.Connection, *, shared: bool = False) -> tuple[int, list[str]]:
    """The file's schema version and its tables (reads only; SQLite's own are left out):
    its user_version, or, `shared`, liteq_version's (user_version for a queue file of
    liteq's own opened shared)."""
    tables = [row[0] for row in conn.execute(queries.TABLES)]
    if shared and SHARED_VERSION in tables:
        row = conn.execute("SELECT version FROM liteq_version").fetchone()
    elif shared and "liteq_jobs" not in tables:
        row = None
    else:
        row = conn.execute(queries.USER_VERSION).fetchone()
    return (0 if row is None else int(row[0])), tables


def _set_version(conn: apsw.Connection, version: int, *, shared: bool) -> None:
    if not shared:
        conn.execute(f"PRAGMA user_version = {version}")
        return
    conn.execute("CREATE TABLE IF NOT EXISTS liteq_version (version INTEGER NOT NULL)")
    conn.execute("DELETE FROM liteq_version")
    conn.execute("INSERT INTO liteq_version VALUES (?)", (version,))


def refusal(version: int, tables: list[str], *, shared: bool = False) -> str | None:
    """Why a file with this user_version and these tables is no liteq queue (completing
    "<path> …"), or None: a liteq queue, or a file without liteq's tables that liteq may
    set up (empty, or, `shared`, an application's database that keeps liteq's beside its
    own)."""
    foreign = [] if shared else [t for t in tables if not t.startswith("liteq_")]
    if not shared and (SHARED_VERSION in tables or (foreign and "liteq_jobs" in tables)):
        return (
            "holds a liteq queue beside an application's own tables: open it as the "
            "application's database, SQLiteStore(path, shared=True) (a URL: ?shared=1)"
        )
    if foreign or (version != 0 and "liteq_jobs" not in tables):
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        return (
            f"is another application's database (tables: {shown or 'none'}; user_version "
            f"{version}): liteq keeps its queue in a file of its own; give it a new path, "
            "such as jobs.sqlite beside it"
        )
    if version > SCHEMA_VERSION:
        return (
            f"has schema version {version}, newer than this liteq understands "
            f"({SCHEMA_VERSION}): upgrade liteq"
        )
    if version == 0 and any(t.startswith("liteq_") for t in tables):
        return f"has liteq's tables ({', '.join(tables)}) but no schema version"
    return None


def migrate(conn: apsw.Connection, path: str, *, shared: bool = False) -> None:
    """Set up a new file, or bring an older one to SCHEMA_VERSION, in one transaction."""
    # Up to date: no write lock taken (an application's transaction on a shared file may
    # hold it, in this very thread).
    version, tables = read(conn, shared=shared)
    if version == SCHEMA_VERSION and refusal(version, tables, shared=shared) is None:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Again, now that no other process can be setting it up meanwhile.
        version, tables = read(conn, shared=shared)
        why = refusal(version, tables, shared=shared)
        if why is not None:
            raise StoreError(f"{path} {why}")
        if version == 0:
            # Iterate: apsw runs a script's later statements only as its cursor advances.
            script = schema_sql()
            if shared:  # (its last statement sets user_version)
                script = script.replace(f"PRAGMA user_version = {SCHEMA_VERSION};", "")
            for _ in conn.execute(script):
                pass
            _set_version(conn, SCHEMA_VERSION, shared=shared)
        else:
            for step in range(version, SCHEMA_VERSION):
                for _ in conn.execute(MIGRATIONS[step]):
                    pass
                _set_version(conn, step + 1, shared=shared)
        got = read(conn, shared=shared)[0]
        if got != SCHEMA_VERSION:
            raise StoreError(f"schema of {path} is at {got}, expected {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
