"""Offload: the thread in which a store's async API runs its blocking calls.

SQLite (apsw) is synchronous, and so is the memory store: `await store.aenqueue(job)` on
them runs `store.enqueue(job)` in a thread, so that the caller's event loop goes on while
the write waits for the file's write lock (up to the store's busy timeout while workers or
other processes hold it) and while it commits. A write transaction is short, and the store's
connection takes one caller at a time anyway (its mutex), so one thread per store is enough:
a thread of the store's own also keeps a queue of waiting enqueues out of the loop's default
executor, which the application's `asyncio.to_thread` and asyncio's own name lookups use.

No thread crosses fork(): a child makes its own on first use.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Offload:
    """A store's own thread for blocking calls made from async code, started on first use
    and stopped by close() (a later call starts it again)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._mutex = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0

    async def call(self, fn: Callable[[], T]) -> T:
        """`fn()`, run in the thread (with the caller's context variables); the caller's
        loop runs meanwhile. Cancelling the await does not stop `fn`, which runs to its end."""
        import asyncio  # (the caller's loop imported it: no cost to a store used without it)

        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._executor_now(), context.run, fn)

    def _executor_now(self) -> ThreadPoolExecutor:
        with self._mutex:
            if self._executor is None or self._pid != os.getpid():  # (a forked child: anew)
                self._executor = ThreadPoolExecutor(1, thread_name_prefix=self._name)
                self._pid = os.getpid()
            return self._executor

    def close(self) -> None:
        """Stop the thread once the calls handed to it are done (without waiting for them)."""
        with self._mutex:
            executor, self._executor = self._executor, None
        if executor is not None and self._pid == os.getpid():
            executor.shutdown(wait=False)
