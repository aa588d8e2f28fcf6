"""Tasks of the results tests (a task is a module-level function)."""

from __future__ import annotations

from typing import Any

import liteq


def double(n: int) -> int:
    return 2 * n


def triple(n: int) -> int:
    return 3 * n


def make_tasks(store: liteq.stores.BaseStore) -> dict[str, Any]:
    """`triple` as a task that keeps its value, `double` as one that does not."""
    return {
        "double": store.task(double),
        "triple_kept": store.task(keep_result=True)(triple),
    }
