"""Print, as JSON, what get_result says of each task id given, and the runs recorded."""

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand
from django.db import connections
from django.tasks import default_task_backend
from django.tasks.exceptions import TaskResultDoesNotExist
from shop.models import Run


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("ids", nargs="+")

    def handle(self, *args: Any, **options: Any) -> None:
        out: dict[str, Any] = {
            "runs": list(Run.objects.order_by("id").values_list("label", flat=True))
        }
        results = {}
        for result_id in options["ids"]:
            try:
                results[result_id] = default_task_backend.get_result(result_id)
            except TaskResultDoesNotExist:
                out[result_id] = None
        # (Before aget_result: Django runs it in a thread whose connection stays open.)
        out["held"] = held()
        for result_id, result in results.items():
            again = asyncio.run(default_task_backend.aget_result(result_id))
            out[result_id] = {
                "status": result.status,
                "same_async": again.status == result.status,
                "task": result.task.module_path,
                "queue": result.task.queue_name,
                "priority": result.task.priority,
                "value": result.return_value if result.status == "SUCCESSFUL" else None,
                "errors": [
                    [e.exception_class_path, e.traceback.strip().splitlines()[-1], _name(e)]
                    for e in result.errors
                ],
                "attempts": result.attempts,
                "times": [
                    t is not None
                    for t in (result.enqueued_at, result.started_at, result.finished_at)
                ],
            }
        self.stdout.write(json.dumps(out))


def _name(error: Any) -> str | None:
    """The name of the class TaskError.exception_class resolves to (None if it cannot:
    Django's own backends name a model's DoesNotExist as an attribute of its model too)."""
    try:
        return str(error.exception_class.__name__)
    except (ImportError, ValueError):
        return None


def held() -> int:
    """Connections to the site's database this process still holds once Django has closed
    its own: liteq should keep none (the results were read on Django's connection)."""
    connections.close_all()
    connection = connections["default"]
    if connection.vendor == "sqlite":
        site = os.path.realpath(connection.settings_dict["NAME"])
        fds = Path("/proc/self/fd").iterdir()
        return sum(1 for fd in fds if os.path.realpath(fd) == site)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        (count,) = cursor.fetchone()
    connections.close_all()
    return int(count)
