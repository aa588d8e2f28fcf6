"""The site's own tests, run by `manage.py test` (tests/test_django.py runs it): a task
enqueued in a test is found by get_result, and the test database is dropped after."""

from django.db import transaction
from django.tasks import TaskResultStatus, default_task_backend
from django.test import TestCase, TransactionTestCase
from shop.tasks import note

from liteq.testing import drain


class TasksInATest(TestCase):
    def test_a_task_enqueued_in_the_tests_transaction_is_found(self) -> None:
        with transaction.atomic():
            result = note.enqueue("in a test")
            found = note.get_result(result.id)
        assert found.status == TaskResultStatus.READY
        assert found.args == ["in a test"]


class TasksRunThroughLiteq(TransactionTestCase):
    """docs/django.md's recipe: tasks run by liteq's own worker, in the test's process."""

    def test_a_task_runs_and_its_result_is_read(self) -> None:
        result = note.enqueue("drained")  # (committed: a TransactionTestCase)
        try:
            assert drain(default_task_backend.store) == 1
        finally:
            default_task_backend.close()  # (liteq's connections: the test database goes)
        found = note.get_result(result.id)
        assert found.status == TaskResultStatus.SUCCESSFUL
        assert found.return_value == "drained"
