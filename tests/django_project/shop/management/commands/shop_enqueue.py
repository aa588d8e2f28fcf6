"""Enqueue the test's tasks, every way a site would; print their ids as JSON."""

import asyncio
import json
import types
from datetime import timedelta
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction
from django.tasks import task
from django.tasks.exceptions import InvalidTask
from django.test import Client
from django.utils import timezone
from shop.models import Order
from shop.tasks import attempt, mail, note, receipt, refuse


class Rollback(Exception):
    pass


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--migrate", action="store_true", help="migrate first")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["migrate"]:  # (one process for both: the test's time)
            call_command("migrate", verbosity=0)
        ids: dict[str, Any] = {}
        ids["committed"] = Client().get("/order", {"item": "book"}).json()["task"]
        try:
            with transaction.atomic():
                order = Order.objects.create(item="lost")
                ids["rolled_back"] = receipt.enqueue(order.pk).id
                raise Rollback
        except Rollback:
            pass
        ids["failing"] = refuse.enqueue("no stock").id
        later = timezone.now() + timedelta(hours=1)
        result = note.using(run_after=later).enqueue("later")
        ids["later"] = result.id
        ids["later_status"] = result.status
        ids["low"] = note.using(priority=-5).enqueue("low").id
        ids["high"] = note.using(priority=50).enqueue("high").id
        ids["async"] = mail.enqueue("ann@example.com").id
        ids["context"] = attempt.enqueue().id
        ids["aenqueued"] = asyncio.run(note.aenqueue("from async")).id
        ids["refused"] = refused()
        self.stdout.write(json.dumps(ids))


def script_function() -> None: ...


def refused() -> list[str]:
    """What validate_task refuses, in Django's own exception: functions a worker could not
    import by their module path."""
    said = []

    def nested() -> None: ...

    # A module-level function of a script run as `python script.py`:
    in_a_script = types.FunctionType(script_function.__code__, {}, "script_function")
    in_a_script.__module__ = "__main__"
    for func in (nested, in_a_script):
        try:
            task(func)
        except InvalidTask as exc:
            said.append(str(exc))
    return said
