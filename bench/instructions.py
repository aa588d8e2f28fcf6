"""CPU instructions per job on liteq's hot paths, counted by valgrind: repeatable where seconds are not.

    python bench/instructions.py                 # every measure (about 2 minutes here)
    python bench/instructions.py worker enqueue  # some of them

Each measure runs twice under `valgrind --tool=callgrind`, for 500 and for 2,500 jobs after
the same set-up; the difference of the two totals over 2,000 is what one job costs, start-up
and set-up cancelled out. The counts repeat to within about 0.5 % whatever else the machine
does, so they show a change of a few per cent that timings on a shared VM (±25 %) hide. They
leave out the kernel (the WAL's writes, file locks): a ratio of counts is not a ratio of speeds.
A worker's memory check (psutil, every 0.1 s of the clock, which valgrind slows 50 times)
adds a few thousand instructions per job that a real run does not pay.
prefetch-postgres counts this process alone (the server's work is not in it) and needs a
PostgreSQL server (found as bench/postgres.py finds one); its heartbeat's renewals, on the
clock that valgrind slows, make it repeat to within about 2 %.
Needs valgrind (Debian: apt-get install valgrind).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL, LARGE = 500, 2_500

MEASURES = {
    "worker": "a Worker runs noop jobs, prefetch 1",
    "prefetch": "a Worker runs noop jobs, prefetch 100",
    "prefetch-postgres": "the same on PostgreSQL (this process only, not the server's)",
    "enqueue": "store.enqueue, one job per call",
    "enqueue_many": "store.enqueue_many, 100 jobs per call",
    "floor-drain": "the raw floor of bench/run.py: claim + complete",
    "floor-enqueue": "the raw floor of bench/run.py: enqueue",
    "floor-enqueue-batched": "the raw floor of bench/run.py: enqueue, 100 per transaction",
}


def run(measure: str, jobs: int) -> None:
    """The measured program (run under valgrind): set up, then `jobs` jobs of `measure`."""
    sys.path.insert(0, str(ROOT))
    import liteq
    from bench.jobs import Noop
    from bench.run import floor_db, floor_drain, floor_enqueue, floor_enqueue_batched

    tmp = Path(tempfile.mkdtemp())
    if measure == "prefetch-postgres":
        postgres_worker(jobs)
        return
    if measure.startswith("floor"):
        floor = floor_db(tmp / "floor.sqlite")
        floor_enqueue(floor, LARGE + 500)
        measured = {"floor-drain": floor_drain, "floor-enqueue-batched": floor_enqueue_batched}
        measured.get(measure, floor_enqueue)(floor, jobs)
        return
    store = liteq.SQLiteStore(tmp / "liteq.sqlite")
    store.enqueue_many([Noop(1) for _ in range(LARGE + 500)])
    if measure in ("worker", "prefetch"):
        liteq.Worker(
            store,
            exit_after_n_jobs=jobs,
            jitter=False,
            check_code=False,  # (its scans run by the clock, which valgrind slows 50 times)
            prefetch=100 if measure == "prefetch" else 1,
        ).start()
    elif measure == "enqueue":
        for _ in range(jobs):
            store.enqueue(Noop(1))
    else:
        for _ in range(jobs // 100):
            store.enqueue_many([Noop(1) for _ in range(100)])


def postgres_worker(jobs: int) -> None:
    """A Worker at prefetch 100 on PostgreSQL, in a schema of its own (dropped after)."""
    import liteq
    from bench.jobs import Noop
    from bench.postgres import schema, server

    dsn = server(None)
    with schema(dsn) as s:
        store = liteq.PostgresStore(dsn, schema=s)
        store.enqueue_many([Noop(1) for _ in range(LARGE + 500)])
        liteq.Worker(
            store, exit_after_n_jobs=jobs, jitter=False, check_code=False, prefetch=100
        ).start()
        store.close()


def count(valgrind: str, measure: str, jobs: int) -> int:
    proc = subprocess.run(
        [
            valgrind,
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--run",
            measure,
            str(jobs),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        run(sys.argv[2], int(sys.argv[3]))
        return
    asked = sys.argv[1:] or list(MEASURES)
    unknown = [m for m in asked if m not in MEASURES]
    if unknown:
        sys.exit(f"unknown measure {unknown[0]!r}; choose from {', '.join(MEASURES)}")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    for measure in asked:
        small, large = count(valgrind, measure, SMALL), count(valgrind, measure, LARGE)
        per_job = (large - small) / (LARGE - SMALL)
        print(
            f"  {measure:<21} {per_job:>10,.0f} instructions/job   {MEASURES[measure]}", flush=True
        )


if __name__ == "__main__":
    main()
