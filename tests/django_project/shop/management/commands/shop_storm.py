"""Place orders as a busy site does, each with its receipt task in the order's
transaction; one in three rolls back. Print, as JSON, the committed orders' ids and how
many transactions failed with "database is locked" (each one is retried)."""

import json
import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db import OperationalError, transaction
from shop.models import Order
from shop.tasks import receipt


class Rollback(Exception):
    pass


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--count", type=int, default=100)
        parser.add_argument("--label", default="a")
        parser.add_argument("--pause", type=float, default=0.0, help="seconds between orders")
        parser.add_argument("--read-first", action="store_true", help="read, then write")

    def handle(self, *args: Any, **options: Any) -> None:
        committed, locked = [], 0
        for n in range(options["count"]):
            while True:
                try:
                    pk = self.order(n, options)
                    break
                except OperationalError as exc:
                    if "locked" not in str(exc):
                        raise
                    locked += 1
            if pk is not None:
                committed.append(pk)
                time.sleep(options["pause"])
        self.stdout.write(json.dumps({"committed": committed, "locked": locked}))

    def order(self, n: int, options: dict[str, Any]) -> int | None:
        lost = n % 3 == 2
        try:
            with transaction.atomic():
                if options["read_first"]:  # (what a view often does: look, then write)
                    Order.objects.filter(item="none").exists()
                order = Order.objects.create(item="lost" if lost else f"{options['label']}{n}")
                receipt.enqueue(order.pk)
                if lost:
                    raise Rollback
        except Rollback:
            return None
        return int(order.pk)
