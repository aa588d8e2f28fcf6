"""The site's own tests, run by `manage.py test` (tests/test_django.py runs it): a task
enqueued in a test is found by get_result, and the test database is dropped after."""

from django.db import transaction
from django.tasks import TaskResultStatus
from django.test import TestCase
from shop.tasks import note


class TasksInATest(TestCase):
    def test_a_task_enqueued_in_the_tests_transaction_is_found(self) -> None:
        with transaction.atomic():
            result = note.enqueue("in a test")
            found = note.get_result(result.id)
        assert found.status == TaskResultStatus.READY
        assert found.args == ["in a test"]
