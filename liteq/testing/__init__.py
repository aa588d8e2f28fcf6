"""Testing an application's jobs without a server and without sleeping.

`drain(store)` runs every due job in this process, as a worker would; `eager(store)` runs
each job as it is enqueued; `enqueued(store, ...)` lists the jobs waiting; a `Clock` moves
the store's time; `run_schedules(store, *periodics)` enqueues periodic jobs' due slots. The pytest plugin (`liteq.testing.plugin`, registered through the
`pytest11` entry point) gives the fixtures `liteq_store`, `liteq_sqlite_store` and
`liteq_clock`. See docs/testing.md.

    store = liteq.MemoryStore(clock=(clock := Clock()))
    send_welcome.enqueue("ann@example.com")
    assert drain(store) == 1
"""

from liteq.testing.clock import Clock
from liteq.testing.drain import drain
from liteq.testing.eager import eager
from liteq.testing.pending import enqueued
from liteq.testing.schedules import run_schedules

__all__ = ["Clock", "drain", "eager", "enqueued", "run_schedules"]
