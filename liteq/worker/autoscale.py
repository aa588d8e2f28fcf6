"""Autoscaling: how many worker processes each pool wants, and the seam that applies it.

`decide` is the policy: a pure function of a pool's recent samples (its due backlog, how
long its oldest due job has waited, its throughput, how many of its workers are busy), its
current count, its limits and the time, to a desired count and the reason for it. `cap`
holds the desired counts of all pools to `--max-processes` and to the host's memory.
`Autoscaler` keeps each pool's samples and last changes and applies decisions through a
`Scalable` driver: `liteq work`'s supervisor is the local one (processes it forks); a driver
for a container platform would implement the same two methods (see docs/deploying.md).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

log = logging.getLogger("liteq.autoscale")

#: Target wait (seconds) when none is given: the oldest due job may wait this long.
DEFAULT_TARGET_WAIT: Final = 5.0
#: Idle this long (seconds) before a pool gives back one process; and no more than one
#: step down per this long.
DEFAULT_COOLDOWN: Final = 60.0
#: A step up at most multiplies a pool's count by this. Up fast, down slow: each step waits
#: for its workers to start and settle, so a burst met by small steps waits through several,
#: while a pool too large for a while costs only memory, given back after the cooldown.
GROWTH: Final = 4
#: Samples older than the cooldown by this many seconds are dropped (the policy looks back
#: one cooldown).
KEEP_EXTRA: Final = 10.0


class Scalable(Protocol):
    """What applies a pool's desired count: `liteq work`'s supervisor (local processes), or
    a driver of containers. `scale_to` may take effect later (a process starting, a worker
    finishing its job); `current` counts what is asked for, running or starting."""

    def current(self) -> int: ...

    def scale_to(self, n: int) -> None: ...


@dataclasses.dataclass(frozen=True)
class Limits:
    """A pool's bounds and knobs (seconds for times)."""

    minimum: int
    maximum: int
    target_wait: float = DEFAULT_TARGET_WAIT
    cooldown: float = DEFAULT_COOLDOWN

    def __post_init__(self) -> None:
        if not 0 <= self.minimum <= self.maximum or self.maximum < 1:
            raise ValueError(
                f"need 0 <= MIN <= MAX and MAX >= 1, not {self.minimum}:{self.maximum}"
            )
        if self.target_wait <= 0:
            raise ValueError(f"target wait must be positive, not {self.target_wait!r}")
        if self.cooldown < 0:
            raise ValueError(f"cooldown must not be negative, not {self.cooldown!r}")

    @property
    def settle(self) -> float:
        """After a step up, how long before another: new workers need a moment to start and
        take from the backlog before the wait they are to bring down can show it."""
        return min(self.target_wait, 2.0)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One look at a pool's queues: `due` jobs due now, the oldest of them due for
    `oldest_wait` seconds (None: none due), `rate` jobs finished per second by the pool
    lately (None: not known), `busy` of its workers running a job."""

    at: float
    due: int
    oldest_wait: float | None
    rate: float | None = None
    busy: int = 0


@dataclasses.dataclass(frozen=True)
class Decision:
    """A desired count and why (an empty reason: no change)."""

    count: int
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Changes:
    """When a pool last grew and last shrank (None: never)."""

    up: float | None = None
    down: float | None = None


def decide(
    samples: Sequence[Sample], current: int, limits: Limits, changes: Changes, now: float
) -> Decision:
    """The count a pool wants now. Grow (at most GROWTH times, at least +1) while its oldest
    due job has waited longer than the target, or its backlog per worker is more than its
    recent throughput clears within the target; one at once from zero on the first due job. Shrink
    one step once it has had nothing due and an idle worker for a whole cooldown, and not
    within a cooldown of its last change. Always within [minimum, maximum]."""
    low, high = limits.minimum, limits.maximum
    if current < low:
        return Decision(low, f"below its minimum {low}")
    if current > high:
        return Decision(high, f"above its maximum {high}")
    if not samples:
        return Decision(current)
    last = samples[-1]
    if last.due and current == 0:
        return Decision(1, f"{last.due} due, none running")
    want = _wanted(last, current, limits)
    settled = changes.up is None or now - changes.up >= limits.settle
    if want is not None and current < high and settled:
        count, why = want
        return Decision(min(high, max(current + 1, min(count, GROWTH * current))), why)
    if current <= low or want is not None:
        return Decision(current)
    calm_since = now - limits.cooldown
    for change in (changes.up, changes.down):
        if change is not None and change > calm_since:
            return Decision(current)
    window = [s for s in samples if s.at >= calm_since]
    if samples[0].at > calm_since or not window:
        return Decision(current)  # not watched for a whole cooldown yet
    if all(s.due == 0 and s.busy < current for s in window):
        return Decision(current - 1, f"idle for {limits.cooldown:g} s")
    return Decision(current)


def _wanted(last: Sample, current: int, limits: Limits) -> tuple[int, str] | None:
    """(count, why) if the pool is behind its target, else None."""
    if last.oldest_wait is not None and last.oldest_wait > limits.target_wait:
        return GROWTH * current, f"oldest due waited {last.oldest_wait:.1f} s"
    if last.rate and current and last.due:
        per_worker = last.rate / current
        needed = math.ceil(last.due / (per_worker * limits.target_wait))
        if needed > current:
            clears = last.due / last.rate
            return needed, f"{last.due} due would take {clears:.1f} s at {last.rate:.1f}/s"
    return None


def cap(
    wanted: Mapping[str, int],
    current: Mapping[str, int],
    max_processes: int | None,
    spare: int | None = None,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Desired counts held to `max_processes` in all and to what the host's memory holds:
    `spare` bytes for new processes (None: no limit), a new process of a pool taking
    `sizes[pool]` bytes (what its workers use; a pool not in `sizes` is not limited).
    Shrinking is never held back; growth is granted pool by pool, in the order given, as
    far as what is left allows (a pool never drops below its current count for it)."""
    allowed = dict(current)
    for name, n in wanted.items():
        if n <= current[name]:
            allowed[name] = n
    for name, n in wanted.items():
        if n <= current[name]:
            continue
        grant = n - current[name]
        if max_processes is not None:
            grant = min(grant, max(0, max_processes - sum(allowed.values())))
        size = (sizes or {}).get(name)
        if spare is not None and size:
            grant = min(grant, max(0, spare // size))
            spare -= grant * size
        allowed[name] = current[name] + grant
    return allowed


@dataclasses.dataclass
class Pool:
    """A pool as the Autoscaler sees it: its limits, its driver, what it saw and did."""

    name: str
    limits: Limits
    driver: Scalable
    samples: deque[Sample] = dataclasses.field(default_factory=deque)
    changes: Changes = Changes()
    last: str = ""  # the last decision, as logged
    held_at: int | None = None  # the count a cap holds it at, once said


class Autoscaler:
    """Takes a sample per pool each tick, decides, caps, and applies through the drivers."""

    def __init__(self, pools: Sequence[Pool], max_processes: int | None = None) -> None:
        self.pools = {pool.name: pool for pool in pools}
        self.max_processes = max_processes

    def tick(
        self,
        samples: Mapping[str, Sample],
        now: float,
        spare: int | None = None,
        sizes: Mapping[str, int] | None = None,
    ) -> list[str]:
        """Decide and apply for every pool sampled; return the decisions' log lines.
        `spare`: bytes of memory new processes may take (None: not limited); `sizes`: the
        bytes a new process of each pool takes (see `cap`)."""
        current = {name: pool.driver.current() for name, pool in self.pools.items()}
        wanted: dict[str, int] = {}
        reasons: dict[str, str] = {}
        for name, pool in self.pools.items():
            if name in samples:
                pool.samples.append(samples[name])
            horizon = now - pool.limits.cooldown - KEEP_EXTRA
            while len(pool.samples) > 1 and pool.samples[1].at < horizon:
                pool.samples.popleft()
            decision = decide(pool.samples, current[name], pool.limits, pool.changes, now)
            wanted[name], reasons[name] = decision.count, decision.reason
        allowed = cap(wanted, current, self.max_processes, spare, sizes)
        unheld = cap(wanted, current, self.max_processes)
        lines = []
        for name, pool in self.pools.items():
            was, now_n = current[name], allowed[name]
            why = "memory" if now_n < unheld[name] else "--max-processes"
            if now_n == was:
                if wanted[name] > was and pool.held_at != was:  # (said once, not each tick)
                    pool.held_at = was
                    pool.last = f"{name}: held at {was} by {why} ({reasons[name]})"
                    lines.append(pool.last)
                continue
            pool.driver.scale_to(now_n)
            line = f"{name}: {was} -> {now_n}, {reasons[name]}"
            if now_n < wanted[name]:
                line += f" (wanted {wanted[name]}: capped by {why})"
            pool.last, pool.held_at = line, None
            if now_n > was:
                pool.changes = dataclasses.replace(pool.changes, up=now)
            else:
                pool.changes = dataclasses.replace(pool.changes, down=now)
            lines.append(line)
        for line in lines:
            log.info("%s", line)
        return lines
