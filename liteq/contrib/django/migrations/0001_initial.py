"""liteq's tables in the Django database of each LiteqBackend that keeps its queue there
(OPTIONS DATABASE): on PostgreSQL, liteq's schema (OPTIONS SCHEMA, "liteq")."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import migrations


def create(apps: Any, schema_editor: Any) -> None:
    """Make (or bring up to date) the queue of every liteq backend on this database."""
    from django.tasks import task_backends

    from liteq.contrib.django.backend import LiteqBackend
    from liteq.contrib.django.place import install

    alias = schema_editor.connection.alias
    for backend in task_backends.all():
        if isinstance(backend, LiteqBackend) and backend.place.alias == alias:
            backend.check_place()
            install(backend.place)


class Migration(migrations.Migration):
    # liteq opens connections of its own to set up its tables: no transaction of Django's
    # stays open meanwhile.
    atomic = False
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []
    # Undone, it leaves the queue (its jobs) in place: DROP SCHEMA liteq CASCADE removes it.
    operations: ClassVar[list[Any]] = [
        migrations.RunPython(create, migrations.RunPython.noop, elidable=False)
    ]
