"""What each worker of `manage.py liteq_work` imports after fork (`liteq work --import`):
Django set up in that process (settings, the app registry; database connections open on
first use, in this process only), and the `tasks` modules of the installed apps imported,
so that their tasks' job types are known. Other modules: `--import MODULE`."""

from __future__ import annotations

import logging

import django
from django.conf import settings
from django.utils.module_loading import autodiscover_modules


def _quiet_like_liteq() -> None:
    """Django's task lines (`django.tasks`) at the level `liteq work` logs at (-q, -v), and
    printed once: Django's default logging gives its `django` logger a level and, with
    DEBUG, a console handler of their own, beside the one `liteq work` set up. A site that
    configures the `django` loggers itself (LOGGING) keeps its own."""
    configured = getattr(settings, "LOGGING", {}).get("loggers", {})
    if any(name == "django" or name.startswith("django.") for name in configured):
        return
    logging.getLogger("django.tasks").setLevel(logging.getLogger().level)
    framework = logging.getLogger("django")
    for handler in list(framework.handlers):
        if handler.get_name() == "console":  # (mail_admins stays: a failed task mails)
            framework.removeHandler(handler)


django.setup()
_quiet_like_liteq()
autodiscover_modules("tasks")
