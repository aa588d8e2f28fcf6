"""Idle pickup latency and idle CPU of `liteq work`, measured with real processes.

    python bench/pickup.py [--samples 200] [--idle-samples 25]

Starts `liteq work --processes 1` on a fresh file, then from this process enqueues one job
at a time, at random moments while the worker is idle: first shortly after other jobs (the
worker polls fast for 2 s after activity), then after long idle gaps (it polls every 50 ms).
Each job records how long after its enqueue it started. Prints p50/p90/p99/max, then the CPU used by the idle supervisor and
worker over 10 s.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

import liteq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.jobs import Stamp, liteq_work  # noqa: E402 - needs the path set above


def measure(samples: int = 200, idle_samples: int = 25) -> tuple[list[tuple[str, str]], float]:
    """Run the two pick-up phases and the idle-CPU reading on a fresh file.

    Returns (phase, "p50 … max") pairs and the idle CPU of supervisor + worker, in % of a core.
    """
    with tempfile.TemporaryDirectory() as tmp:
        db, out = Path(tmp) / "q.sqlite", Path(tmp) / "stamps.txt"
        store = liteq.SQLiteStore(db)
        work = liteq_work(db, "--processes", "1", start_new_session=True)
        try:
            time.sleep(1.5)
            phases = [
                ("recently busy (jobs 20-100 ms apart)", samples, (0.02, 0.1)),
                ("long idle (jobs 2.2-2.6 s apart)", idle_samples, (2.2, 2.6)),
            ]
            latencies = []
            for name, count, gap in phases:
                out.write_text("")
                for _ in range(count):
                    time.sleep(random.uniform(*gap))  # the worker is idle meanwhile
                    store.enqueue(Stamp(str(out), time.time()))
                deadline = time.monotonic() + 30
                while store.count() and time.monotonic() < deadline:
                    time.sleep(0.05)
                delays = sorted(float(x) * 1000 for x in out.read_text().split())
                q = statistics.quantiles(delays, n=100, method="inclusive")  # never past max
                latencies.append(
                    (
                        f"pickup latency, worker {name}, {len(delays)} jobs",
                        f"p50 {q[49]:.1f} ms, p90 {q[89]:.1f} ms, p99 {q[98]:.1f} ms, "
                        f"max {delays[-1]:.1f} ms",
                    )
                )
            time.sleep(3)  # past the busy window
            procs = [psutil.Process(work.pid), *psutil.Process(work.pid).children()]
            before = [p.cpu_times() for p in procs]
            time.sleep(10)
            used = sum(
                (a.user + a.system) - (b.user + b.system)
                for a, b in zip((p.cpu_times() for p in procs), before, strict=True)
            )
            return latencies, used / 10 * 100
        finally:
            os.killpg(work.pid, signal.SIGTERM)
            work.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=200, help="jobs while recently busy")
    parser.add_argument("--idle-samples", type=int, default=25, help="jobs after long idle")
    args = parser.parse_args()
    latencies, idle_cpu = measure(args.samples, args.idle_samples)
    for what, value in latencies:
        print(f"{what} from another process: {value}")
    print(f"idle CPU of supervisor + 1 worker over 10 s: {idle_cpu:.2f} % of one core")


if __name__ == "__main__":
    main()
