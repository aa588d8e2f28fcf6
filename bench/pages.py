"""Which page size suits your jobs: liteq with 1 KiB pages (its default) and 4 KiB pages.

    python bench/pages.py              # about two minutes: five rounds, medians reported
    python bench/pages.py --rounds 3   # quicker

For jobs whose state is about 100 bytes to 100 KB, enqueues jobs one at a
time into a new file made with `SQLiteStore(path, page_size=...)`, then drains it with one
worker in this process. The two page sizes take turns (each goes first in every other
round), so both see the same machine; the last column is 4 KiB's rate over 1 KiB's (above 1: 4 KiB pages are faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import liteq  # noqa: E402 - after the path is set
from bench.jobs import Noop  # noqa: E402

PAGE_SIZES = (1024, 4096)
#: State size (bytes of its one string) -> jobs per measurement: ~0.3 s or more each.
STATES = {100: 6_000, 300: 6_000, 1_000: 6_000, 3_000: 4_000, 10_000: 2_000, 100_000: 400}


def measure(tmp: Path, page_size: int, size: int, jobs: int) -> tuple[float, float]:
    """Enqueue then drain `jobs` jobs with a `size`-byte state; return both rates (jobs/s)."""
    store = liteq.SQLiteStore(tmp / f"{page_size}-{size}.sqlite", page_size=page_size)
    blob = "x" * size
    began = time.perf_counter()
    for _ in range(jobs):
        store.enqueue(Noop(blob))  # type: ignore[arg-type]
    enqueued = time.perf_counter()
    liteq.Worker(store, exit_if_no_jobs=True, jitter=False).start()
    drained = time.perf_counter()
    store.close()
    return jobs / (enqueued - began), jobs / (drained - enqueued)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported")
    args = parser.parse_args()
    rates: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for round_ in range(max(1, args.rounds)):
        for size, jobs in STATES.items():
            for page_size in PAGE_SIZES[:: 1 if round_ % 2 else -1]:  # each goes first by turns
                with tempfile.TemporaryDirectory() as name:
                    rates.setdefault((size, page_size), []).append(
                        measure(Path(name), page_size, size, jobs)
                    )
    print(f"liteq {liteq.__version__}, median of {max(1, args.rounds)} round(s), jobs/s")
    print("| state | step | 1 KiB pages | 4 KiB pages | 4 KiB / 1 KiB |")
    print("|---|---|---|---|---|")
    for size in STATES:
        small, large = rates[(size, 1024)], rates[(size, 4096)]
        for step, i in (("enqueue", 0), ("drain", 1)):
            a = statistics.median(r[i] for r in small)
            b = statistics.median(r[i] for r in large)
            ratio = statistics.median(y[i] / x[i] for x, y in zip(small, large, strict=True))
            print(f"| {size:,} B | {step} | {a:,.0f} | {b:,.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
