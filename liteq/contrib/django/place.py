"""Where a LiteqBackend's queue lives: in a Django database (`OPTIONS["DATABASE"]`, the
default) or at a liteq URL of its own (`OPTIONS["URL"]`); its URL for liteq's tools, and
the store that reads and writes it."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from liteq.errors import StoreError
from liteq.stores import BaseStore, SQLiteStore, connect, postgres_store, sqlite_path

#: The OPTIONS a LiteqBackend reads, and what each means (docs/django.md).
KNOWN: Final = {
    "DATABASE": "the Django database alias whose database holds the queue (default 'default')",
    "URL": "a liteq URL: a queue of its own, outside the Django database",
    "SCHEMA": "PostgreSQL: the schema of liteq's tables in the Django database ('liteq')",
    "KEEP_RESULT": "seconds a finished task's result is kept (default a day)",
    "MAX_ATTEMPTS": "attempts a task gets before it fails for good (default 1)",
}

#: Connection settings of Django's PostgreSQL backend that are psycopg's objects or
#: Django's own, not libpq's: liteq's own connections leave them out.
_NOT_LIBPQ: Final = frozenset({"cursor_factory", "context", "prepare_threshold"})


@dataclass(frozen=True)
class Place:
    """Where a backend's queue lives: a Django database (`alias`), else a liteq URL."""

    alias: str | None
    url: str | None
    schema: str

    @property
    def joins(self) -> bool:
        """Whether enqueues join the Django database's transaction."""
        return self.alias is not None


def place_of(options: Mapping[str, Any]) -> Place:
    """The place a backend's OPTIONS name; ImproperlyConfigured saying what is wrong."""
    unknown = sorted(set(options) - set(KNOWN))
    if unknown:
        raise ImproperlyConfigured(
            f"unknown liteq OPTIONS {', '.join(unknown)}: it takes {', '.join(KNOWN)}"
        )
    url, alias, schema = options.get("URL"), options.get("DATABASE"), options.get("SCHEMA")
    if url is not None and alias is not None:
        raise ImproperlyConfigured(
            "liteq OPTIONS: DATABASE (the queue in a Django database) or URL (a queue of "
            "its own), not both"
        )
    if url is not None:
        if not isinstance(url, str) or not url:
            raise ImproperlyConfigured(f"liteq OPTIONS URL must be a liteq URL, not {url!r}")
        if schema is not None:
            raise ImproperlyConfigured(
                "liteq OPTIONS SCHEMA is for DATABASE; with URL, say ?schema=NAME in it"
            )
        return Place(None, url, "liteq")
    alias = "default" if alias is None else alias
    if not isinstance(alias, str) or not alias:
        raise ImproperlyConfigured(f"liteq OPTIONS DATABASE must be an alias, not {alias!r}")
    return Place(alias, None, "liteq" if schema is None else str(schema))


def vendor(place: Place) -> str:
    """The Django database's vendor ("sqlite", "postgresql") for DATABASE; "" for URL."""
    if place.alias is None:
        return ""
    if place.alias not in connections.settings:
        raise ImproperlyConfigured(
            f"liteq OPTIONS DATABASE {place.alias!r} is not in DATABASES "
            f"({', '.join(connections.settings)})"
        )
    name: str = connections[place.alias].vendor
    if name not in ("sqlite", "postgresql"):
        raise ImproperlyConfigured(
            f"liteq keeps a queue in SQLite or PostgreSQL, not in the {name} database "
            f"{place.alias!r}: give OPTIONS URL (a queue of its own) instead"
        )
    return name


def sqlite_file(place: Place) -> str:
    """The file of a Django SQLite database that holds the queue (the test database's while
    tests run); ImproperlyConfigured for a database in memory, which no worker can open."""
    connection = connections[str(place.alias)]
    if connection.is_in_memory_db():
        # (Django's test runner puts a SQLite test database in memory unless TEST names one.)
        which = (
            "test database" if "memorydb" in str(connection.settings_dict["NAME"]) else "database"
        )
        raise ImproperlyConfigured(
            f"liteq keeps its queue in the Django database {place.alias!r}, and its {which} "
            "is in memory, where no worker can reach it: give it a file (for the tests: "
            f"DATABASES[{place.alias!r}]['TEST'] = {{'NAME': BASE_DIR / 'test.sqlite3'}}), "
            "or give the queue OPTIONS URL"
        )
    return os.path.abspath(str(connection.settings_dict["NAME"]))


def django_sqlite_at(place: Place) -> str | None:
    """The alias of a Django SQLite database whose file a `sqlite:` URL names (the same
    file: by device and inode once both are there, else by path), if one does."""
    if place.url is None or ("://" in place.url and not place.url.lower().startswith("sqlite:")):
        return None
    try:
        queue = sqlite_path(place.url if "://" in place.url else f"sqlite:///{place.url}")
    except ValueError:
        return None
    for alias in connections.settings:
        settings = connections.settings[alias]
        if "sqlite" in str(settings.get("ENGINE", "")) and _same_file(queue, settings.get("NAME")):
            return str(alias)
    return None


def _same_file(path: str, other: object) -> bool:
    if not isinstance(other, str | os.PathLike):
        return False
    try:
        ours, theirs = os.stat(path), os.stat(other)
    except OSError:
        return os.path.realpath(path) == os.path.realpath(other)
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


def postgres_params(alias: str) -> dict[str, str]:
    """libpq's connection settings of a Django PostgreSQL database, as Django gives them
    its own connections (NAME, USER, HOST, PORT, PASSWORD, OPTIONS; the test database
    while tests run)."""
    params = connections[alias].get_connection_params()
    return {k: str(v) for k, v in params.items() if k not in _NOT_LIBPQ and v is not None}


def queue_url(place: Place) -> str:
    """The liteq URL of the queue (`liteq --db`, LITEQ_URL): what liteq's tools open."""
    if place.url is not None:
        return place.url
    if vendor(place) == "sqlite":
        return _sqlite_url(place)
    return _postgres_url(place, schema=True)


def _sqlite_url(place: Place) -> str:
    # shared: the site's database, through Python's sqlite3 as Django's own connections.
    return f"sqlite:///{quote(sqlite_file(place))}?shared=1"


def queue_env(place: Place) -> dict[str, str]:
    """The environment that points liteq's command line at the queue: LITEQ_URL, and a
    Django PostgreSQL database's password apart, in PGPASSWORD (libpq reads it), so that
    no log line or process listing that shows the URL shows the password."""
    if place.url is not None:
        return {"LITEQ_URL": place.url}
    if vendor(place) == "sqlite":
        return {"LITEQ_URL": _sqlite_url(place)}
    env = {"LITEQ_URL": _postgres_url(place, schema=True, password=False)}
    password = postgres_params(str(place.alias)).get("password")
    if password:
        env["PGPASSWORD"] = password
    return env


def open_store(place: Place) -> BaseStore:
    """The store of the queue, opened in this process. For DATABASE, the Django
    database's migration must have made liteq's tables in it (`manage.py migrate`)."""
    if place.url is not None:
        return connect(place.url)
    if vendor(place) == "sqlite":
        return _sqlite_store(place)
    try:
        return postgres_store()(_postgres_url(place, schema=False), schema=place.schema)
    except StoreError as exc:
        raise StoreError(
            f"{exc} (the Django database {place.alias!r}: has `python manage.py migrate` "
            "made liteq's tables in it?)"
        ) from exc


def install(place: Place) -> None:
    """Make liteq's tables in the place's Django database, or bring them up to date (its
    migration runs this); nothing for a queue at a URL, which liteq sets up on first use."""
    if place.alias is None:
        return
    if vendor(place) == "sqlite":
        _sqlite_store(place).close()
    else:
        postgres_store()(_postgres_url(place, schema=False), schema=place.schema).close()


def _sqlite_store(place: Place) -> SQLiteStore:
    """The queue in a Django SQLite database: its tables beside the site's, opened with
    Python's sqlite3 (`shared`), as Django opens the file."""
    if place.schema != "liteq":
        raise ImproperlyConfigured(
            "liteq OPTIONS SCHEMA is for a PostgreSQL database; in SQLite liteq's tables "
            "are named liteq_*"
        )
    return SQLiteStore(sqlite_file(place), shared=True)


def _postgres_url(place: Place, *, schema: bool, password: bool = True) -> str:
    """A URL of the Django PostgreSQL database for liteq (with `?schema=` if asked)."""
    if place.alias is None or vendor(place) != "postgresql":
        raise ImproperlyConfigured(
            f"liteq keeps a queue in a Django database on SQLite or PostgreSQL, not in "
            f"{place.alias!r}: give OPTIONS URL (a queue of its own) instead"
        )
    # The user, host and port in the URL's authority (never empty: liteq.connect reads
    # the URL back), every other libpq setting in its query string (a URL's parts cannot
    # hold them all: a service, sslmode ...); a socket directory as a host is quoted.
    query = postgres_params(place.alias)
    if not password:
        query.pop("password", None)
    user = query.pop("user", None) or getpass.getuser()  # (libpq's default user too)
    host = query.pop("host", "")
    port = query.pop("port", "")
    netloc = quote(user, safe="") + "@" + quote(host, safe="") + (f":{port}" if port else "")
    if schema:
        query["schema"] = place.schema
    return f"postgresql://{netloc}/?" + urlencode(query, quote_via=quote)
