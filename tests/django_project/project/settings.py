"""A small Django site whose tasks run on liteq: its database is SQLite or PostgreSQL, as
the environment says (tests/test_django.py sets it)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test-only"  # noqa: S105 - a test project's
DEBUG = os.environ.get("SHOP_DEBUG") == "1"
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["liteq.contrib.django", "shop"]

if os.environ.get("SHOP_DB") == "postgresql":
    # Django's tables and liteq's schema in a database of the test's own.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["SHOP_PG_NAME"],
            "HOST": os.environ["SHOP_PG_HOST"],
            "PORT": os.environ["SHOP_PG_PORT"],
            "USER": os.environ["SHOP_PG_USER"],
        }
    }
    TASKS = {
        "default": {
            "BACKEND": "liteq.contrib.django.LiteqBackend",
            "QUEUES": ["default", "mail"],
            "OPTIONS": {"SCHEMA": "shop_jobs"},
        }
    }
else:
    # The site's data in its SQLite file; the queue in it too (the outbox), or, with
    # SHOP_QUEUE_URL, in a file of its own. Its tests' database is a file: workers reach it.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["SHOP_SQLITE"],
            "OPTIONS": {
                "transaction_mode": os.environ.get("SHOP_TXMODE", "IMMEDIATE"),
                "timeout": 10,
            },
            "TEST": {}
            if os.environ.get("SHOP_TEST_IN_MEMORY")
            else {"NAME": os.environ["SHOP_SQLITE"] + ".test"},
        }
    }
    TASKS = {
        "default": {
            "BACKEND": "liteq.contrib.django.LiteqBackend",
            "QUEUES": ["default", "mail"],
            "OPTIONS": {"URL": os.environ["SHOP_QUEUE_URL"]}
            if os.environ.get("SHOP_QUEUE_URL")
            else {},
        }
    }
