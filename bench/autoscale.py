"""A bursty day, compressed: `liteq work --autoscale` against fixed `--processes 1` and 4.

    flock /tmp/liteq-bench.lock .venv/bin/python bench/autoscale.py [--bursts 6] [--gap 15]

Each configuration runs the same day on a fresh file: bursts of jobs (50-200 ms each, the
same seeded sizes and lengths every time) enqueued at once, each followed by an idle gap.
The day is compressed, and so are the autoscaler's clocks: a cooldown of --cooldown seconds
(LITEQ_AUTOSCALE_COOLDOWN) and --target-wait, in the ratio a real day would have them to
its gaps. Reported per configuration: each job's wait (started - enqueued) at p50 and p99,
the process-seconds its workers were alive (sampled every 20 ms, from the first burst to
the end of the last gap, or the last job if later), and the floor measured in the same run: the seconds the jobs
themselves ran (the least process-seconds any configuration could use).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import liteq  # noqa: E402 - after the path, as the other benches
from bench.jobs import Sleep, liteq_work  # noqa: E402


def day(bursts: int, seed: int = 7) -> list[list[float]]:
    """Each burst's job lengths in seconds: bursts of 20-120 jobs of 50-200 ms."""
    rng = random.Random(seed)
    return [
        [rng.uniform(0.05, 0.2) for _ in range(rng.choice((20, 40, 80, 120)))]
        for _ in range(bursts)
    ]


def drained(store: liteq.SQLiteStore) -> bool:
    """Whether every job of the day is done."""
    return not any(store.count(status=s) for s in (liteq.Status.QUEUED, liteq.Status.RUNNING))


def run(
    name: str, args: list[str], plan: list[list[float]], gap: float, cooldown: float
) -> dict[str, float]:
    """One configuration over the day: its waits and process-seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "q.sqlite"
        store = liteq.SQLiteStore(db)
        env = {**os.environ, "LITEQ_AUTOSCALE_COOLDOWN": str(cooldown)}
        work = liteq_work(db, *args, start_new_session=True, env=env)
        supervisor = psutil.Process(work.pid)
        try:
            deadline = time.monotonic() + 30
            while not supervisor.children() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # workers started and idle, as at the start of a quiet morning
            process_seconds = 0.0
            last = time.monotonic()
            for n, burst in enumerate(plan, 1):
                store.enqueue_many([Sleep(s) for s in burst], delete_on_complete=False)
                end = time.monotonic() + gap
                # After the last gap, on until every job is done (fixed 1 may lag behind).
                while time.monotonic() < end or (n == len(plan) and not drained(store)):
                    time.sleep(0.02)
                    now = time.monotonic()
                    alive = len(supervisor.children())
                    process_seconds += alive * (now - last)
                    last = now
            waits, ran = [], 0.0
            for mjob in store.jobs(status=liteq.Status.COMPLETED):
                assert mjob.started_at is not None
                assert mjob.finished_at is not None
                waits.append((mjob.started_at - mjob.created_at).total_seconds())
                ran += (mjob.finished_at - mjob.started_at).total_seconds()
        finally:
            os.kill(work.pid, signal.SIGTERM)
            work.wait(60)
            store.close()
    q = statistics.quantiles(waits, n=100, method="inclusive")
    return {"p50": q[49], "p99": q[98], "process_s": process_seconds, "ran_s": ran}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=6)
    parser.add_argument("--gap", type=float, default=15.0, help="idle seconds after a burst")
    parser.add_argument("--cooldown", type=float, default=1.5)
    parser.add_argument("--target-wait", default="0.5")
    parser.add_argument("--max", default="4", help="the autoscaled pool's MAX")
    options = parser.parse_args()
    plan = day(options.bursts)
    jobs = sum(len(b) for b in plan)
    print(
        f"{options.bursts} bursts ({', '.join(str(len(b)) for b in plan)} jobs, {jobs} in all, "
        f"50-200 ms each), {options.gap:g} s idle after each; cooldown {options.cooldown:g} s, "
        f"--target-wait {options.target_wait}"
    )
    configs = {
        "--processes 1": ["--processes", "1"],
        "--processes 4": ["--processes", "4"],
        f"--autoscale 1:{options.max}": [
            *["--autoscale", f"1:{options.max}", "--target-wait", options.target_wait],
        ],
    }
    results = {}
    for name, args in configs.items():
        results[name] = r = run(name, args, plan, options.gap, options.cooldown)
        print(
            f"{name:18} wait p50 {r['p50']:6.2f} s  p99 {r['p99']:6.2f} s  "
            f"process-seconds {r['process_s']:6.1f}  (the jobs ran {r['ran_s']:.1f} s)",
            flush=True,
        )
    auto, four = results[f"--autoscale 1:{options.max}"], results["--processes 4"]
    print(
        f"autoscale / fixed 4: p99 wait {auto['p99'] / four['p99']:.2f}x (target <= 1.5x), "
        f"process-seconds {auto['process_s'] / four['process_s']:.0%} (target <= 60 %); "
        f"process-seconds over the floor (the jobs' own run time): autoscale "
        f"{auto['process_s'] / auto['ran_s']:.2f}x, fixed 4 {four['process_s'] / four['ran_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
