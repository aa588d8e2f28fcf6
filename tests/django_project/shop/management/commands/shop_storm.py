"""Place orders as a busy site does, each with its receipt task in the order's
transaction; one in three rolls back. Print the committed orders' ids as JSON."""

import json
import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from shop.models import Order
from shop.tasks import receipt


class Rollback(Exception):
    pass


class Command(BaseCommand):
    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--count", type=int, default=100)
        parser.add_argument("--label", default="a")
        parser.add_argument("--pause", type=float, default=0.0, help="seconds between orders")

    def handle(self, *args: Any, **options: Any) -> None:
        committed = []
        for n in range(options["count"]):
            lost = n % 3 == 2
            try:
                with transaction.atomic():
                    order = Order.objects.create(item="lost" if lost else f"{options['label']}{n}")
                    receipt.enqueue(order.pk)
                    if lost:
                        raise Rollback
            except Rollback:
                continue
            committed.append(order.pk)
            time.sleep(options["pause"])
        self.stdout.write(json.dumps(committed))
