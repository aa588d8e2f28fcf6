"""run_schedules: enqueue the periodic jobs whose slots are due, as a worker would."""

from __future__ import annotations

from liteq.managed import ManagedJob
from liteq.periodic import Periodic
from liteq.stores.contract import Store


def run_schedules(store: Store, *periodics: Periodic) -> list[ManagedJob]:
    """Enqueue the due slots' jobs of these schedules (what `@store.periodic` returns) at
    the store's clock's time, as a worker serving their queues would, by the store's own
    rules (`store.run_schedule`); return the jobs enqueued, none of them run (`drain` runs
    them). `drain` schedules nothing: a burst worker enqueues no periodic jobs.

    A schedule the store has not seen starts now, as one newly deployed does: its first
    call records the latest past slot as done and enqueues nothing. So call it once, move
    the clock to a slot, and call it again. Of the slots passed since, `catch_up` run (by
    default the latest); with `catch_up=0`, only a slot less than a minute old. A slot of
    a paused queue is skipped.

        run_schedules(store, nightly_report)       # deployed at 02:00: nothing due yet
        clock.set(datetime(2030, 1, 1, 3, tzinfo=UTC))
        [report] = run_schedules(store, nightly_report)
        assert drain(store) == 1
    """
    if not periodics:
        raise TypeError("run_schedules(store, *periodics): give the schedules to run")
    for periodic in periodics:
        if not isinstance(periodic, Periodic):
            raise TypeError(
                f"run_schedules takes schedules, what @store.periodic returns, not {periodic!r}"
            )
    return [mjob for periodic in periodics for mjob in store.run_schedule(periodic)]
