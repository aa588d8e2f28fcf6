"""`python manage.py liteq [--backend ALIAS] COMMAND ...`: liteq's command line (status,
jobs, show, retry, dashboard, ...) on a LiteqBackend's queue."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from liteq.contrib.django import passthrough


class Command(BaseCommand):
    help = (
        "liteq's command line on the queue of a LiteqBackend (--backend ALIAS, default "
        "'default'): `manage.py liteq status`, `liteq jobs --status failed`, `liteq "
        "dashboard`, ... (`manage.py liteq --help` lists them)."
    )

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the arguments to `liteq` as they are (its own parser checks them)."""
        passthrough.run(argv[2:])

    def handle(self, *args: Any, **options: Any) -> None:
        """(From call_command: the same.)"""
        passthrough.run(list(args))
