"""`python manage.py liteq_work [--backend ALIAS] [liteq work's flags]`: workers for
Django's tasks, under liteq work's supervisor."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from liteq.contrib.django import passthrough


class Command(BaseCommand):
    help = (
        "Run liteq workers for the tasks of a LiteqBackend (--backend ALIAS, default "
        "'default'): liteq work's flags (--processes N, --queue Q, --concurrency N, "
        "--burst, ...; `manage.py liteq_work --help` lists them)."
    )

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the arguments to `liteq work` as they are (its own parser checks them)."""
        passthrough.run(["work", *argv[2:]])

    def handle(self, *args: Any, **options: Any) -> None:
        """(From call_command: the same, with liteq work's flags as arguments.)"""
        passthrough.run(["work", *args])
