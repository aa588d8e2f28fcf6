"""LiteqBackend: Django's tasks framework (`django.tasks`) on a liteq queue."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.tasks import Task, TaskResult
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone

from liteq.contrib.django.job import TaskJob, job_class
from liteq.contrib.django.place import Place, django_sqlite_at, open_store, place_of, vendor
from liteq.errors import JobNotFound, ResultExpired
from liteq.job import lookup
from liteq.managed import ManagedJob
from liteq.options import check_text
from liteq.stores import BaseStore

#: A finished task's result is kept this long unless OPTIONS KEEP_RESULT says otherwise.
DEFAULT_KEEP_RESULT: Final = 86400.0

#: A URL naming a Django SQLite database's file: liteq would open it with apsw's SQLite
#: beside Django's sqlite3, two copies of SQLite on one file in one process (stdlib.py).
URL_AT_SITE_FILE: Final = (
    "liteq OPTIONS URL names the file of the Django database {alias!r}: leave URL out, and "
    "the queue lives in that database (OPTIONS DATABASE, the default), through Django's "
    "own SQLite; or give the queue a file of its own (docs/django.md)"
)


class LiteqBackend(BaseTaskBackend):
    """Django's task backend on liteq: `TASKS = {"default": {"BACKEND":
    "liteq.contrib.django.LiteqBackend"}}`.

    OPTIONS: `DATABASE` (the default, "default"): the queue lives in that Django database
    (PostgreSQL, in the schema `SCHEMA`, "liteq"), made by `manage.py migrate`, and
    `enqueue` joins the current transaction: the job exists if and only if it commits.
    `URL`: a queue of its own at that liteq URL (no shared transaction). `KEEP_RESULT`:
    seconds a result is kept (a day); `MAX_ATTEMPTS`: tries per task (1).

    A task's result id is its liteq job id; its priority is liteq's (higher first), its
    queue_name a liteq queue, run_after the job's run_at. Workers: `manage.py liteq_work`.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: Mapping[str, Any]) -> None:
        super().__init__(alias, params)
        self.place: Place = place_of(self.options)
        self.keep_result = _seconds(self.options.get("KEEP_RESULT", DEFAULT_KEEP_RESULT))
        self.max_attempts = self.options.get("MAX_ATTEMPTS", 1)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ImproperlyConfigured(
                f"liteq OPTIONS MAX_ATTEMPTS must be a whole number, not {self.max_attempts!r}"
            )
        if self.max_attempts < 1:
            raise ImproperlyConfigured("liteq OPTIONS MAX_ATTEMPTS must be at least 1")
        self._store: BaseStore | None = None
        self._opening = threading.Lock()

    # -- the queue ---------------------------------------------------------------
    @property
    def store(self) -> BaseStore:
        """The liteq store of this backend's queue, opened on first use in this process."""
        with self._opening:
            if self._store is None:
                self.check_place()
                self._store = open_store(self.place)
                if self.place.alias is not None:
                    # Enqueues and reads go through Django's connection: liteq's own,
                    # which checked the schema, is closed (a test run's teardown drops
                    # the test database, which no other session may then hold).
                    self._store.close()
            return self._store

    def check_place(self) -> None:
        """ImproperlyConfigured for a place liteq cannot use: a database of a vendor other
        than SQLite and PostgreSQL, or a URL that names a Django SQLite database's file."""
        vendor(self.place)
        alias = django_sqlite_at(self.place)
        if alias is not None:
            raise ImproperlyConfigured(URL_AT_SITE_FILE.format(alias=alias))

    def close(self) -> None:
        """Close this process's connections to the queue (they reopen on use)."""
        with self._opening:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- Django's contract ------------------------------------------------------
    def validate_task(self, task: Task) -> None:
        """Django's checks, and what a liteq worker needs: a function it can import by its
        module path (not `__main__`'s), and a queue name liteq takes. Raises InvalidTask.

        It also makes the task's liteq job type, so that a worker knows the type once it
        has imported the task's module (Django calls this as `@task` declares it)."""
        super().validate_task(task)
        if task.func.__module__ == "__main__":
            raise InvalidTask(
                "Task function must be importable by a worker: define it in a module, "
                "not in the script run as __main__."
            )
        try:
            check_text(task.queue_name, "a queue name")
        except (TypeError, ValueError) as exc:
            raise InvalidTask(str(exc)) from exc
        job_class(task)

    def enqueue(self, task: Task, args: Iterable[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        """Enqueue a call of `task`. In the Django database (DATABASE), on its connection:
        inside `transaction.atomic()` the job commits or rolls back with it (idle workers
        wake once it commits); outside, it is committed at once. Returns a READY
        TaskResult whose id is the job's."""
        self.validate_task(task)
        args, kwargs = list(args), dict(kwargs)
        job = job_class(task)(args, kwargs, self.alias)
        options: dict[str, Any] = {
            "queue": task.queue_name,
            "priority": task.priority,
            "max_attempts": self.max_attempts,
            "keep_result": self.keep_result,
        }
        if task.run_after is not None:
            options["run_at"] = _aware(task.run_after)
        # (SQLiteStore's and PostgresStore's enqueue join a connection of Django's.)
        store: Any = self.store
        if self.place.alias is None:
            mjob = store.enqueue(job, **options)
        else:
            # On Django's connection, in its transaction if one is open. Workers wake as it
            # commits: PostgreSQL's NOTIFY goes with the commit, SQLite's log grows by it.
            mjob = store.enqueue(job, connection=self._django_connection(), **options)
        result = job.result_of(mjob, task)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        """The task's result as liteq has it now; TaskResultDoesNotExist if no task has
        that id (or its result expired: KEEP_RESULT)."""
        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        read = self._reader()
        try:
            mjob = read(job_id)
            if mjob.job is None and lookup(mjob.job_type) is None:
                _import_task(mjob.job_type)  # (its module makes the job type)
                mjob = read(job_id)
            job = mjob.job
            if not isinstance(job, TaskJob):
                raise TaskResultDoesNotExist(f"job {job_id} is no Django task")
            return job.result_of(mjob, job.bound(mjob))
        except (JobNotFound, ResultExpired) as exc:
            raise TaskResultDoesNotExist(result_id) from exc

    def _reader(self) -> Callable[[int], ManagedJob]:
        """How get_result reads a job: in the Django database (DATABASE), on Django's own
        connection, so that a task enqueued in the current transaction is found too."""
        store: Any = self.store  # (as in enqueue)
        if self.place.alias is None:
            return self.store.get
        return lambda job_id: store.get(job_id, connection=self._django_connection())

    def _django_connection(self) -> Any:
        """The DB-API connection of the Django database that holds the queue, open."""
        connection = connections[str(self.place.alias)]
        connection.ensure_connection()
        return connection.connection

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """`manage.py check`: where the queue lives must be one liteq can use."""
        where = f"TASKS[{self.alias!r}]"
        try:
            self.check_place()
            kind = vendor(self.place)
        except ImproperlyConfigured as exc:
            yield checks.Error(str(exc), obj=where, id="liteq.E001")
            return
        if kind == "sqlite":
            settings_dict = connections[str(self.place.alias)].settings_dict
            if not (settings_dict.get("TEST") or {}).get("NAME"):
                yield checks.Warning(
                    f"liteq keeps its queue in the SQLite database {self.place.alias!r}, and "
                    "Django's test runner puts its test database in memory, where no queue "
                    "can live: `manage.py test` would fail",
                    hint=f"DATABASES[{self.place.alias!r}]['TEST'] = "
                    "{'NAME': BASE_DIR / 'test.sqlite3'} (docs/django.md)",
                    obj=where,
                    id="liteq.W002",
                )
            options = settings_dict.get("OPTIONS") or {}
            if str(options.get("transaction_mode", "")).upper() not in ("IMMEDIATE", "EXCLUSIVE"):
                yield checks.Warning(
                    f"liteq's workers write the queue in the SQLite database "
                    f"{self.place.alias!r}: the site's transactions that read, then write, "
                    "fail with 'database is locked' when they run into one",
                    hint=f"DATABASES[{self.place.alias!r}]['OPTIONS']['transaction_mode'] = "
                    "'IMMEDIATE' (docs/django.md)",
                    obj=where,
                    id="liteq.W001",
                )
        if kind == "postgresql":
            from django.db.backends.postgresql.psycopg_any import is_psycopg3

            if not is_psycopg3:
                yield checks.Error(
                    "liteq joins Django's PostgreSQL transactions through psycopg 3: "
                    "pip install 'psycopg[binary]' (Django uses it when it is installed)",
                    obj=where,
                    id="liteq.E002",
                )


def _import_task(path: str) -> None:
    """Import the task a job names, if there is one (its module makes its job type)."""
    from django.utils.module_loading import import_string

    with contextlib.suppress(ImportError):
        import_string(path)


def _aware(when: datetime) -> datetime:
    """run_after as liteq takes it: aware (Django's naive times, USE_TZ off, are in its
    TIME_ZONE)."""
    return when if timezone.is_aware(when) else timezone.make_aware(when)


def _seconds(value: object) -> float:
    """KEEP_RESULT in seconds: a positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ImproperlyConfigured(
            f"liteq OPTIONS KEEP_RESULT must be a positive number of seconds, not {value!r}"
        )
    return float(value)
