"""Two checkouts of liteq side by side: enqueue and drain speed, in turns, on this machine.

    python bench/compare.py ../other-checkout            # 8 rounds of 20,000 jobs each
    python bench/compare.py ../other --rounds 12 --jobs 50000

Each round runs, in a fresh process per checkout and in alternating order, 20,000 single
enqueues and a Worker draining 20,000 noop jobs (prefetch=1: one job per claim in both,
the default before workers sized their claims) on a new file; the medians and their ratio
are printed. Turns and medians keep a noisy machine's drift out of the
ratio; seconds still vary, so read several rounds (bench/instructions.py counts CPU
instructions instead, which repeat, but leaves out the kernel).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_MEASURE = """
import json, os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import liteq
from bench.jobs import Noop
n = int(sys.argv[2])
store = liteq.SQLiteStore(os.path.join(tempfile.mkdtemp(), "q.sqlite"))
store.enqueue_many([Noop(1) for _ in range(n)])
began = time.perf_counter()
liteq.Worker(store, exit_if_no_jobs=True, jitter=False, prefetch=1).start()
drain = n / (time.perf_counter() - began)
began = time.perf_counter()
for _ in range(n):
    store.enqueue(Noop(1))
print(json.dumps({"drain": drain, "enqueue": n / (time.perf_counter() - began)}))
"""


def measure(checkout: Path, jobs: int) -> dict[str, float]:
    """One round's rates (jobs/s) of the liteq in `checkout`, in a process of its own."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(checkout), str(jobs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rates: dict[str, float] = json.loads(out.splitlines()[-1])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path, help="another checkout of liteq")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    trees = {"this": ROOT, "other": args.other.resolve()}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(measure(trees[name], args.jobs))
    for what in ("enqueue", "drain"):
        this, other = (statistics.median(r[what] for r in runs[name]) for name in trees)
        print(
            f"{what:8} this {this:9,.0f} jobs/s   other {other:9,.0f} jobs/s   "
            f"this/other {this / other:.2f}"
        )


if __name__ == "__main__":
    main()
