"""liteq against the raw SQLite floor (and huey), measured in one run on this machine.

    python bench/run.py            # about four minutes: three passes, medians reported
    python bench/run.py --quick    # smaller counts, one pass, for a smoke test

It also takes bench/pickup.py's measurement (idle pick-up latency and idle CPU of a
`liteq work`, about 90 s of the four minutes).

The floor is what any SQLite queue must do, written directly against apsw: a table with
a claim index, one INSERT per enqueue; BEGIN IMMEDIATE, UPDATE … RETURNING, COMMIT, then
DELETE per claim+complete; WAL and synchronous=NORMAL (FULL where said), and SQLite's
default 4 KiB pages. liteq makes its files with 1 KiB pages, so two rows also compare it
with a floor given those. Machines are noisy: read the ratios, which compare runs made
minutes apart on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import apsw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import liteq  # noqa: E402 - after the path is set
from bench import pickup  # noqa: E402
from bench.jobs import Noop, Sleep, liteq_work  # noqa: E402
from liteq.options import build_record  # noqa: E402

PAYLOAD = json.dumps({"type": "bench.jobs.Noop", "state": {"n": 1}})
FLOOR_SCHEMA = [
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY, queue TEXT, priority INT, status TEXT,"
    " run_at REAL, payload TEXT)",
    "CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, id) WHERE status = 'queued'",
]
FLOOR_INSERT = "INSERT INTO jobs (queue, priority, status, run_at, payload) VALUES ('default', 0, 'queued', ?, ?)"
FLOOR_CLAIM = (
    "UPDATE jobs SET status = 'running' WHERE id = (SELECT id FROM jobs WHERE status = 'queued'"
    " AND run_at <= ? ORDER BY priority DESC, run_at, id LIMIT 1) RETURNING id, payload"
)


def floor_db(path: Path, sync: int = 1, page_size: int = 4096) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA page_size = {page_size}").fetchall()  # (before WAL writes a header)
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute(f"PRAGMA synchronous = {sync}").fetchall()
    conn.setbusytimeout(10_000)
    for sql in FLOOR_SCHEMA:
        conn.execute(sql)
    return conn


def rate(n: int, fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return n / (time.perf_counter() - began)


def repeat(call: Callable[[], object], times: int) -> None:
    """Call `times` times, keeping no result (as the floor keeps none: holding 100,000
    returned handles would measure Python's garbage collector, ~30 % of a batch enqueue)."""
    for _ in range(times):
        call()


def floor_enqueue(conn: apsw.Connection, n: int) -> None:
    for _ in range(n):
        conn.execute(FLOOR_INSERT, (time.time(), PAYLOAD))


def floor_enqueue_batched(conn: apsw.Connection, n: int, batch: int = 100) -> None:
    for _ in range(n // batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(FLOOR_INSERT, [(time.time(), PAYLOAD)] * batch)
        conn.execute("COMMIT")


def floor_drain(conn: apsw.Connection, n: int) -> None:
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(FLOOR_CLAIM, (time.time(),)).fetchone()
        conn.execute("COMMIT")
        json.loads(row[1])
        conn.execute("DELETE FROM jobs WHERE id = ?", (row[0],))


FLOOR_CLAIM_MANY = (
    "UPDATE jobs SET status = 'running' WHERE id IN (SELECT id FROM jobs WHERE status = 'queued'"
    " AND run_at <= ? ORDER BY priority DESC, run_at, id LIMIT 100) RETURNING id, payload"
)


def floor_drain_batched(conn: apsw.Connection, n: int) -> None:
    for _ in range(n // 100):
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(FLOOR_CLAIM_MANY, (time.time(),)).fetchall()
        conn.execute("COMMIT")
        for row in rows:
            json.loads(row[1])
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("DELETE FROM jobs WHERE id = ?", [(row[0],) for row in rows])
        conn.execute("COMMIT")


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, floor: float | None, liteq_value: float, unit: str = "jobs/s") -> None:
        ratio = f"{liteq_value / floor:.2f}" if floor else ""
        floor_text = f"{floor:,.0f} {unit}" if floor else ""
        self.rows.append((what, floor_text, f"{liteq_value:,.0f} {unit}", ratio))
        print(
            f"  {what:<44} floor {floor_text:>16}   liteq {liteq_value:>10,.0f} {unit}   ratio {ratio}",
            flush=True,
        )

    def note(self, what: str, value: str) -> None:
        self.rows.append((what, "", value, ""))
        print(f"  {what:<44} {value}", flush=True)

    def markdown(self) -> str:
        lines = ["| measure | raw SQLite floor | liteq | liteq / floor |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines)


def drain_in_processes(db: Path, processes: int, prefetch: int | None) -> tuple[float, int]:
    """Drain `db` with `liteq work --burst --prefetch K` (None: `--prefetch auto`, each
    worker sizing its claims); return jobs/s and the largest worker RSS seen."""
    import psutil  # liteq's own dependency

    count = liteq.SQLiteStore(db).count()
    began = time.perf_counter()
    flags = ["--prefetch", "auto" if prefetch is None else str(prefetch)]
    work = liteq_work(db, "--processes", str(processes), *flags, "--burst")
    peak = 0
    # Sample the workers' memory while they run. Finding them (children() reads every
    # process in /proc, ~1 ms) only until they are found: sampling must not take CPU from
    # two workers on two cores that one worker leaves idle.
    children: list[psutil.Process] = []
    while work.poll() is None:
        try:
            if len(children) < processes:
                children = psutil.Process(work.pid).children()
            for child in children:
                peak = max(peak, child.memory_info().rss)
        except psutil.Error:
            children = []
        time.sleep(0.02)
    elapsed = time.perf_counter() - began
    if work.returncode != 0:
        raise RuntimeError(f"liteq work exited {work.returncode}")
    return count / elapsed, peak


def claim_latency(db: Path, queued: int, samples: int = 300) -> float:
    """Median seconds of one claim+complete with `queued` jobs waiting."""
    store = liteq.SQLiteStore(db)
    have = store.count()
    while have < queued:
        step = min(10_000, queued - have)
        store.enqueue_many([Noop() for _ in range(step)])
        have += step
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        mjob = store.claim("bench", lease=30)
        assert mjob is not None
        store.complete(mjob)
        times.append(time.perf_counter() - began)
    store.enqueue_many([Noop() for _ in range(samples)])  # keep the depth for the next size
    return statistics.median(times)


def enqueue_latency_under_load(db: Path, samples: int) -> list[float]:
    """Seconds of each of `samples` single enqueues made while two `liteq work` processes
    drain noop jobs one per transaction (a web process enqueuing beside busy workers)."""
    store = liteq.SQLiteStore(db)
    store.enqueue_many([Noop(1) for _ in range(samples * 50)])  # they outlast the samples
    # One job a claim, as the docstring says: workers that size their claims would drain
    # the queue before the samples end, and start again and again under --burst.
    work = liteq_work(db, "--processes", "2", "--burst", "--prefetch", "1")
    seconds = []
    try:
        time.sleep(0.5)  # the workers are up and draining
        for _ in range(samples):
            began = time.perf_counter()
            store.enqueue(Noop(1))
            seconds.append(time.perf_counter() - began)
            time.sleep(0.001)
        if work.poll() is not None or store.count(status=liteq.Status.QUEUED) < samples:
            raise RuntimeError("the workers ran out of jobs before the samples were taken")
    finally:
        work.terminate()
        work.wait()
    return sorted(seconds)


def huey_workload(tmp: Path, n: int) -> tuple[float, float] | None:
    try:
        from huey import SqliteHuey  # type: ignore[import-untyped]
    except ImportError:
        return None
    huey = SqliteHuey(filename=str(tmp / "huey.sqlite"))

    @huey.task()
    def noop() -> None:
        pass

    enqueue = rate(n, lambda: repeat(noop, n))

    def drain() -> None:
        for _ in range(n):
            huey.execute(huey.dequeue())

    return enqueue, rate(n, drain)


def page_size_of(path: Path) -> int:
    """The page size of an SQLite file (liteq's own choice for the files it makes)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(conn.execute("PRAGMA page_size").fetchall()[0][0])
    finally:
        conn.close()


def liteq_insert_alone(store: liteq.SQLiteStore, n: int) -> None:
    """What a liteq enqueue (no coalesce id) asks of its backend, with none of the Python
    around it: the Backend primitive `_insert_one` (its writer gate, one INSERT in
    autocommit mode, the check that the file is still at its path) of a row built
    beforehand. The ceiling of liteq's enqueue as a ratio to the floor."""
    record = build_record(Noop(1), {}, time.time())
    for _ in range(n):
        store._insert_one(record)


#: `liteq work --prefetch` as measured: one job per claim (the default), auto (None: sized by
#: each worker), 100.
PREFETCHES = (1, None, 100)


def work_key(label: str, processes: int, prefetch: int | None) -> str:
    flag = " --prefetch auto" if prefetch is None else f" --prefetch {prefetch}"
    return f"liteq work, {label} jobs, --processes {processes}{flag}"


def throughput(tmp: Path, n: int) -> dict[str, tuple[float | None, float]]:
    """One pass of the throughput measures: label -> (floor, liteq)."""
    out: dict[str, tuple[float | None, float]] = {}
    floor = floor_db(tmp / "floor.sqlite")
    store = liteq.SQLiteStore(tmp / "liteq.sqlite")
    f = rate(n, lambda: floor_enqueue(floor, n))
    out["enqueue, one per transaction"] = (
        f,
        rate(n, lambda: repeat(lambda: store.enqueue(Noop(1)), n)),
    )
    sql_only = liteq.SQLiteStore(tmp / "liteq-sql.sqlite")
    out["enqueue, the backend's insert alone (Store._insert_one)"] = (
        f,
        rate(n, lambda: liteq_insert_alone(sql_only, n)),
    )
    sql_only.close()
    f = rate(n, lambda: floor_drain(floor, n))
    out["claim + complete, one worker"] = (
        f,
        rate(n, liteq.Worker(store, exit_if_no_jobs=True, jitter=False, prefetch=1).start),
    )
    page_size = page_size_of(tmp / "liteq.sqlite")
    small = floor_db(tmp / "floor-small-pages.sqlite", page_size=page_size)
    pages = f"{page_size // 1024} KiB pages"
    out[f"enqueue, against a floor with liteq's {pages}"] = (
        rate(n, lambda: floor_enqueue(small, n)),
        out["enqueue, one per transaction"][1],
    )
    out[f"claim + complete, against a floor with {pages}"] = (
        rate(n, lambda: floor_drain(small, n)),
        out["claim + complete, one worker"][1],
    )
    floor_enqueue_batched(floor, n * 5)
    f = rate(n * 5, lambda: floor_drain_batched(floor, n * 5))
    store.enqueue_many([Noop(1) for _ in range(n * 5)])
    out["claim + complete, 100 per transaction (prefetch=100)"] = (
        f,
        rate(n * 5, liteq.Worker(store, exit_if_no_jobs=True, jitter=False, prefetch=100).start),
    )
    f = rate(n * 5, lambda: floor_enqueue_batched(floor, n * 5))
    out["enqueue_many, 100 per transaction"] = (
        f,
        rate(
            n * 5,
            lambda: repeat(lambda: store.enqueue_many([Noop(1) for _ in range(100)]), n // 20),
        ),
    )
    store.close()
    full_floor = floor_db(tmp / "floor-full.sqlite", sync=2)
    full = liteq.SQLiteStore(tmp / "liteq-full.sqlite", durability="full")
    m = max(500, n // 10)
    out["enqueue, durability=full"] = (
        rate(m, lambda: floor_enqueue(full_floor, m)),
        rate(m, lambda: repeat(lambda: full.enqueue(Noop(1)), m)),
    )
    full.close()
    for label, make, count in (("noop", Noop, n), ("1 ms", Sleep, max(500, n // 10))):
        for prefetch in PREFETCHES:
            # Enough jobs that starting the processes (~0.3 s) does not dominate.
            jobs = count * 5 if label == "noop" and prefetch != 1 else count
            for processes in (1, 2):
                path = tmp / f"work-{label}-{prefetch}-{processes}.sqlite"
                liteq.SQLiteStore(path).enqueue_many([make() for _ in range(jobs)])
                jobs_per_s, rss = drain_in_processes(path, processes, prefetch)
                key = work_key(label, processes, prefetch)
                out[key] = (None, jobs_per_s)
                out[f"rss {key}"] = (None, rss)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, one pass")
    parser.add_argument(
        "--passes", type=int, default=3, help="throughput passes; medians are reported"
    )
    args = parser.parse_args()
    n = 2_000 if args.quick else 20_000
    passes = 1 if args.quick else max(1, args.passes)
    depths = [1_000, 10_000] if args.quick else [1_000, 100_000, 1_000_000]
    report = Report()
    print(
        f"liteq {liteq.__version__}, SQLite {apsw.sqlite_lib_version()}, apsw {apsw.apsw_version()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {date.today()}, "
        f"median of {passes} pass(es)"
    )
    runs: list[dict[str, tuple[float | None, float]]] = []
    for _ in range(passes):
        with tempfile.TemporaryDirectory() as name:
            runs.append(throughput(Path(name), n))

    def median(key: str) -> tuple[float | None, float]:
        floors = [r[key][0] for r in runs]
        floor = statistics.median(f for f in floors if f is not None) if floors[0] else None
        return floor, statistics.median(r[key][1] for r in runs)

    for key in runs[0]:
        if key.startswith(("rss ", "liteq work")):
            continue
        report.add(key, *median(key))
    enqueue_rate = median("enqueue, one per transaction")[1]
    drain_rate = median("claim + complete, one worker")[1]
    for label in ("noop", "1 ms"):
        for prefetch in PREFETCHES:
            rates = []
            for processes in (1, 2):
                key = work_key(label, processes, prefetch)
                rates.append(median(key)[1])
                report.add(key, None, rates[-1])
            report.note(
                f"{label} jobs, prefetch {prefetch or 'default'}: 2 processes / 1",
                f"{rates[1] / rates[0]:.2f}",
            )
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        lat = {d: claim_latency(tmp / "depth.sqlite", d) for d in depths}
        for depth, seconds in lat.items():
            report.note(
                f"claim+complete latency, {depth:,} queued", f"{seconds * 1e6:.0f} µs (median)"
            )
        report.note(
            f"latency at {depths[-1]:,} / at {depths[0]:,}",
            f"{lat[depths[-1]] / lat[depths[0]]:.2f}",
        )
        lat_load = enqueue_latency_under_load(tmp / "load.sqlite", 300 if args.quick else 1500)
        report.note(
            "enqueue latency while 2 workers drain noop jobs",
            f"p50 {statistics.median(lat_load) * 1e3:.2f} ms, "
            f"p99 {lat_load[int(len(lat_load) * 0.99)] * 1e3:.1f} ms, "
            f"max {lat_load[-1] * 1e3:.1f} ms",
        )
        latencies, idle_cpu = pickup.measure(40 if args.quick else 200, 3 if args.quick else 25)
        for what, value in latencies:
            report.note(what, value)
        report.note("idle CPU of supervisor + 1 worker", f"{idle_cpu:.1f} % of one core")
        peak_rss = max(v[1] for r in runs for k, v in r.items() if k.startswith("rss "))
        report.note("peak RSS of one worker process (sampled)", f"{peak_rss / 2**20:.0f} MiB")

        huey = huey_workload(tmp, n)
        if huey is None:
            report.note("huey", "not installed (pip install huey)")
        else:
            report.note("huey SqliteHuey enqueue", f"{huey[0]:,.0f} jobs/s")
            report.note("huey SqliteHuey dequeue + execute", f"{huey[1]:,.0f} jobs/s")
            report.note("liteq / huey, enqueue one at a time", f"{enqueue_rate / huey[0]:.2f}")
            report.note(
                "liteq / huey, claim + complete one at a time", f"{drain_rate / huey[1]:.2f}"
            )
    print()
    print(report.markdown())


if __name__ == "__main__":
    main()
