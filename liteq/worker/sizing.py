"""ClaimSize: how many jobs a worker's next claim takes when `prefetch` is left unset.

One job per transaction costs a commit per job: for short jobs the commit, not the job, is
the pace. A batch makes that cost one per batch, but a job held in a batch waits for those
before it while another worker might be idle. So a batch grows only while both hold: the
queue is deeper than the last claim (it came back full), and the batch's expected run time,
from the jobs run lately, is within BUDGET. A shallow queue or a slow job brings it back
to one at once. Held jobs are claimed, leased and renewed as prefetched ones are.
"""

from __future__ import annotations

from typing import Final

#: The longest a held batch is expected to take to run, by the jobs run lately (seconds):
#: about what a completion may wait for its batch (ACK_DELAY), so that no job a worker
#: holds waits much longer than that to start.
BUDGET: Final = 0.05
#: The most jobs an adaptive claim takes: past it a claim's cost per job no longer falls
#: much, and a worker that dies loses less time for the jobs it held.
MOST: Final = 100
#: How much of a faster job's time the estimate takes in (a slower one is taken in whole,
#: so that the batch shrinks at the first slow job and grows back slowly).
EASING: Final = 0.25


class ClaimSize:
    """The size of a worker's next claim, from the claims and runs it saw (one thread)."""

    def __init__(self, budget: float = BUDGET, most: int = MOST) -> None:
        self._budget = budget
        self._most = most
        #: Seconds per job by the jobs run lately (None: none run yet).
        self._per_job: float | None = None
        self._next = 1

    def next(self) -> int:
        """How many jobs the next claim may take."""
        return min(self._next, self._cap())

    def claimed(self, asked: int, got: int, timed: bool = False) -> None:
        """A claim asked for `asked` jobs and took `got`: a full claim says the queue is at
        least that deep (the next may take twice as many), a short one that it is shallow
        (one at a time again, so that other workers get the few jobs there are). `timed`:
        some had a max_runtime, which a held job's start must write (mark_started): for
        those a batch saves no write, and the next claim takes one."""
        if got >= asked and not timed:
            self._next = min(2 * asked, self._most)
        else:
            self._next = 1

    def ran(self, seconds: float) -> bool:
        """A job ran for `seconds`: whether it was slow (past half the budget), so that the
        jobs held behind it should go back for other workers to take."""
        per_job = self._per_job
        if per_job is None or seconds >= per_job:
            self._per_job = seconds
        else:
            self._per_job = per_job + EASING * (seconds - per_job)
        slow = seconds * 2 > self._budget
        if slow:
            self._next = 1
        return slow

    def _cap(self) -> int:
        """The most jobs whose expected run time fits the budget (1 until a job has run)."""
        per_job = self._per_job
        if per_job is None:
            return 1
        if per_job <= 0:
            return self._most
        return max(1, min(self._most, int(self._budget / per_job)))
