"""liteq's schema in a PostgreSQL database: its version, and the migrations to it.

liteq keeps its tables in a schema of its own (`liteq` unless told otherwise), with a
`meta` table holding the version; `migrations/NN_*.sql` take version NN-1 to NN. The first
store to open a database sets it up; later ones, and newer liteqs, migrate it, one at a
time under an advisory lock. A schema that holds tables liteq did not make, or that a newer
liteq made, is refused and left as it is.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from liteq.errors import StoreError
from liteq.stores.postgres.queries import channel, queries, quoted
from liteq.stores.sqlshared import numbered_scripts

#: The schema version this code writes; older ones are migrated on open.
SCHEMA_VERSION: Final = 9


MIGRATIONS: Final[dict[int, str]] = numbered_scripts(__package__)


def read_version(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """The schema's liteq version; None if it does not exist or is empty. StoreError if
    it holds tables liteq did not make."""
    q = queries(schema)
    tables = [row[0] for row in conn.execute(q.TABLES, (schema,))]
    if not tables:
        return None
    if "meta" not in tables:
        shown = ", ".join(tables[:5]) + (", …" if len(tables) > 5 else "")
        raise StoreError(
            f"the PostgreSQL schema {schema} holds tables liteq did not make ({shown}): "
            "give liteq a schema of its own (?schema=NAME in the URL)"
        )
    row = conn.execute(q.META_VERSION).fetchone()
    return 0 if row is None else int(row[0])


def _check(version: int | None, schema: str) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(
            f"the PostgreSQL schema {schema} has liteq schema version {version}, newer than "
            f"this liteq understands ({SCHEMA_VERSION}): upgrade liteq"
        )


def migrate(conn: psycopg.Connection[Any], schema: str) -> None:
    """Set up the schema, or bring it to SCHEMA_VERSION; StoreError if it is refused."""
    version = read_version(conn, schema)
    _check(version, schema)
    if version == SCHEMA_VERSION:
        return
    q = queries(schema)
    try:
        with conn.transaction():
            # Again, now that no other process can be setting it up meanwhile.
            conn.execute(q.MIGRATION_LOCK, (f"liteq:{schema}",))
            version = read_version(conn, schema)
            _check(version, schema)
            if version is None:
                for statement in (q.CREATE_SCHEMA, q.CREATE_META, q.INIT_META):
                    conn.execute(statement)
                version = 0
            # (Names checked by SCHEMA_NAME: nothing in them needs escaping.)
            names = {"{s}": quoted(schema), "{channel}": f"'{channel(schema)}'"}
            for step in range(version, SCHEMA_VERSION):
                script = MIGRATIONS[step]
                for placeholder, name in names.items():
                    script = script.replace(placeholder, name)
                conn.execute(script.encode())
            conn.execute(q.SET_VERSION, (SCHEMA_VERSION,))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"cannot set up liteq's schema {schema}: {str(exc).strip().splitlines()[0]} "
            f"(a database owner can run: CREATE SCHEMA {schema} AUTHORIZATION <liteq's user>)"
        ) from exc


def check_readable(conn: psycopg.Connection[Any], schema: str, server: str) -> None:
    """StoreError unless the schema holds a queue of SCHEMA_VERSION (for readers, which
    neither create nor migrate)."""
    version = read_version(conn, schema)
    if version is None or version == 0:
        raise StoreError(f"no liteq queue in schema {schema} of {server}")
    _check(version, schema)
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"the liteq queue in schema {schema} of {server} has schema version {version}: "
            "open it once read-write (a worker, say) to bring it up to date"
        )
