"""The Django app: `INSTALLED_APPS += ["liteq.contrib.django"]`."""

from __future__ import annotations

from django.apps import AppConfig


class LiteqConfig(AppConfig):
    """liteq's app: its migration puts the queue's tables in the Django database, its
    commands (`liteq_work`, `liteq`) run workers and liteq's tools on that queue."""

    name = "liteq.contrib.django"
    label = "liteq"
    verbose_name = "liteq"
