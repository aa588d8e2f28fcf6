"""liteq for Django's tasks framework (Django 6, Python 3.12+; docs/django.md).

    INSTALLED_APPS += ["liteq.contrib.django"]
    TASKS = {"default": {"BACKEND": "liteq.contrib.django.LiteqBackend"}}

then `python manage.py migrate` and `python manage.py liteq_work`.
"""

from liteq.contrib.django.backend import LiteqBackend

__all__ = ["LiteqBackend"]
