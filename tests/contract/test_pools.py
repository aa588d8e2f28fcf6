"""The autoscaled pools' state: what a `liteq work` supervisor reports, every process of
any store reads back (`liteq status`, the dashboard, /metrics)."""

from __future__ import annotations

import liteq
from liteq.stores.contract import PoolInfo
from liteq.stores.registry import POOL_LEASE, SILENT_LEASES
from tests.conftest import Clock


def pool(name: str, processes: int, decision: str = "", at: float | None = None) -> PoolInfo:
    return PoolInfo("", name, "host-a", 4242, processes, 1, 4, 2.5, decision, at)


def test_a_report_replaces_the_last_and_is_read_back(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    assert store.pools() == []
    store.report_pools("host-a/4242/1", [pool("mail", 1), pool("default", 2)])
    decided = clock.now
    clock.advance(1)
    store.report_pools("host-a/4242/1", [pool("mail", 3, "mail: 1 -> 3, 40 due", decided)])
    store.report_pools("host-b/7/9", [pool("all", 1)])
    got = store.pools()
    assert [(p.supervisor, p.name, p.processes) for p in got] == [
        ("host-a/4242/1", "mail", 3),
        ("host-b/7/9", "all", 1),
    ]
    mail = got[0]
    assert (mail.minimum, mail.maximum, mail.target_wait) == (1, 4, 2.5)
    assert (mail.decision, mail.decided_at) == ("mail: 1 -> 3, 40 due", decided)
    assert mail.beat_at == clock.now  # stamped by the store's clock
    # A supervisor that stops takes its rows with it.
    store.report_pools("host-a/4242/1", [])
    assert [p.supervisor for p in store.pools()] == ["host-b/7/9"]


def test_a_silent_supervisors_pools_are_not_listed_then_forgotten(
    store: liteq.stores.BaseStore, clock: Clock
) -> None:
    store.report_pools("killed/1/1", [pool("all", 4)])
    clock.advance(POOL_LEASE + 1)
    store.report_pools("alive/2/2", [pool("all", 1)])
    assert [p.supervisor for p in store.pools()] == ["alive/2/2"]
    # (Still a row until a later report forgets it: listed no more, either way.)
    clock.advance(SILENT_LEASES * POOL_LEASE)
    store.report_pools("alive/2/2", [pool("all", 1)])
    assert [p.supervisor for p in store.pools()] == ["alive/2/2"]
