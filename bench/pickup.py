"""Idle pick-up latency and idle CPU: liteq on SQLite beside huey and Celery on Redis.

    python bench/pickup.py                                  # about 8 minutes
    python bench/pickup.py --samples 10 --only floor liteq

Each system's own worker command runs at its defaults (`liteq work --processes 1`,
`huey_consumer`, `celery worker -c 1`); once it has run a first job and then idled 3 s,
another process enqueues one job at a time, each after an idle gap of 2.2-2.6 s, and the
job appends how long after its enqueue call it started. Then the worker's processes idle
10 s and their CPU time is read. Printed: p50/p90/p99/max per system, each p50 as a
multiple of the floor measured in the same run, and the idle CPU in % of one core. Last,
the idle CPU of `liteq work --processes 4` over 30 s (--idle-workers): each worker's
heartbeat commits, and wakes the others for nothing.

The floor is the machine's own: a byte written into a pipe to an idle process, after the
same gaps, until that process reads it. "liteq-poll" is liteq with inotify turned off
(LITEQ_NO_INOTIFY=1): how it learns of commits where the kernel cannot tell it.

huey and Celery use Redis (--redis: a database number they must find empty; flushed
after each). They are installed in a virtualenv of their own, bench/.peers (made on first
use, shared with bench/coroutines.py); --peers names another.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import liteq  # noqa: E402
from bench.coroutines import peers_python  # noqa: E402 - needs the path set above
from bench.jobs import Stamp, liteq_work  # noqa: E402

SYSTEMS = "floor", "liteq", "liteq-poll", "huey", "celery"

# The job of each peer (a module written into the run's directory), and how to enqueue it.
MODULES = {
    "pickup_huey": """
import os, time
from huey import RedisHuey

huey = RedisHuey("pickup", url=os.environ["BENCH_REDIS"])


@huey.task()
def stamp(path, enqueued_at):
    delay = time.time() - enqueued_at
    with open(path, "a") as f:
        f.write(f"{delay:.6f}\\n")
""",
    "pickup_celery": """
import os, time
from celery import Celery

app = Celery("pickup", broker=os.environ["BENCH_REDIS"])


@app.task(ignore_result=True)
def stamp(path, enqueued_at):
    delay = time.time() - enqueued_at
    with open(path, "a") as f:
        f.write(f"{delay:.6f}\\n")
""",
}

# Enqueue one job, sleeping first; `gaps` more times. argv: out, count, low, high.
DRIVER = """
import random, sys, time
out, count, low, high = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
{setup}
for _ in range(count):
    time.sleep(random.uniform(low, high))
    {enqueue}
"""
ENQUEUES = {
    "liteq": (
        "import liteq, os; from bench.jobs import Stamp; "
        "store = liteq.connect(os.environ['BENCH_DB'])",
        "store.enqueue(Stamp(out, time.time()))",
    ),
    "huey": ("from pickup_huey import stamp", "stamp(out, time.time())"),
    "celery": ("from pickup_celery import stamp", "stamp.delay(out, time.time())"),
}

# The floor: an idle process woken by a byte through a pipe; it says when it read it.
ECHO = """
import os, time
while os.read(0, 1):
    os.write(1, f"{time.time():.6f}\\n".encode())
"""

REDIS = """
import os, sys, redis
r = redis.Redis.from_url(os.environ["BENCH_REDIS"])
if sys.argv[1] == "check":
    if r.dbsize():
        sys.exit(f"{os.environ['BENCH_REDIS']} holds keys: name an empty one (--redis)")
    print(r.info("server")["redis_version"])
else:
    r.flushdb()
"""


def quantiles(delays: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of `delays` (seconds), in milliseconds."""
    ms = sorted(d * 1000 for d in delays)
    q = statistics.quantiles(ms, n=100, method="inclusive")  # never past max
    return {"p50": q[49], "p90": q[89], "p99": q[98], "max": ms[-1]}


def floor(samples: int, gap: tuple[float, float]) -> list[float]:
    echo = subprocess.Popen(
        [sys.executable, "-c", ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert echo.stdin is not None
    assert echo.stdout is not None
    delays = []
    try:
        for _ in range(samples):
            time.sleep(random.uniform(*gap))
            sent = time.time()
            echo.stdin.write(b"x")
            echo.stdin.flush()
            delays.append(float(echo.stdout.readline()) - sent)
    finally:
        echo.stdin.close()
        echo.wait(10)
        echo.stdout.close()
    return delays


def cpu_seconds(root: psutil.Process) -> float:
    """User + system CPU time of `root` and its descendants alive now."""
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def worker(
    system: str,
    tmp: Path,
    python: Path,
    env: dict[str, str],
    processes: int = 1,
    command: list[str] | None = None,
) -> Iterator[int]:
    """The system's worker command (or `command`, run in `tmp`), running: its pid."""
    db = env.get("BENCH_DB", "")
    commands = {
        "liteq": [sys.executable, "-m", "liteq", "work", "--db", db, "--import", "bench.jobs"],
        "huey": [str(python.parent / "huey_consumer"), "pickup_huey.huey"],
        "celery": [str(python.parent / "celery"), "-A", "pickup_celery", "worker", "-c", "1"],
    }
    if command is None:
        command = commands[system]
    elif system == "liteq":
        raise ValueError("liteq's worker command is this module's own")
    if system == "liteq":
        command += ["--processes", str(processes), "-q"]
    elif system == "celery":
        command += ["--loglevel", "WARNING"]
    proc = subprocess.Popen(
        command,
        cwd=ROOT if system == "liteq" else tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc.pid
    finally:
        end_group(proc)


def end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group a worker command leads; SIGKILL if it outlasts 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def drive(
    system: str,
    python: Path,
    env: dict[str, str],
    out: Path,
    n: int,
    gap: tuple[float, float],
    enqueue_code: tuple[str, str] | None = None,
) -> None:
    setup, enqueue = enqueue_code or ENQUEUES[system]
    script = DRIVER.format(setup=setup, enqueue=enqueue)
    args = [str(out), str(n), str(gap[0]), str(gap[1])]
    cwd = ROOT if system == "liteq" else out.parent
    subprocess.run([str(python), "-c", script, *args], cwd=cwd, env=env, check=True)


def measure_system(
    system: str,
    tmp: Path,
    python: Path,
    env: dict[str, str],
    samples: int,
    gap: tuple[float, float],
    peer: tuple[list[str], tuple[str, str]] | None = None,
    idle: bool = True,
) -> tuple[list[float], float | None]:
    """(the pick-up delays in seconds, the idle CPU in % of a core, None if not `idle`) of
    one system. `peer`: a system this module does not know, as its worker command and the
    (setup, enqueue) code of the driver (DRIVER); its job appends its delay to `out`."""
    if system == "floor":
        return floor(samples, gap), None
    kind = "liteq" if system.startswith("liteq") else system
    command, enqueue = peer or (None, None)
    out = tmp / f"{system}.stamps"
    out.write_text("")
    with worker(kind, tmp, python, env, command=command) as pid:
        drive(kind, python, env, out, 1, (0.0, 0.0), enqueue)  # a first job: the worker is up
        deadline = time.monotonic() + 60
        while not out.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not out.read_text():
            raise SystemExit(f"{system}: its worker ran no job within 60 s")
        out.write_text("")
        time.sleep(3)  # idle
        drive(kind, python, env, out, samples, gap, enqueue)
        deadline = time.monotonic() + 30
        while len(out.read_text().split()) < samples and time.monotonic() < deadline:
            time.sleep(0.05)
        delays = [float(x) for x in out.read_text().split()]
        if not idle:
            return delays, None
        time.sleep(3)
        root = psutil.Process(pid)
        before = cpu_seconds(root)
        time.sleep(10)
        idle_cpu = (cpu_seconds(root) - before) / 10 * 100
    return delays, idle_cpu


def idle_cpu(tmp: Path, env: dict[str, str], processes: int) -> float:
    """The idle CPU of `liteq work --processes N`, in % of a core: each worker's heartbeat is
    a commit, which wakes the others (for nothing) where inotify reports commits."""
    with worker("liteq", tmp, Path(sys.executable), env, processes) as pid:
        time.sleep(5)  # started, and settled
        root = psutil.Process(pid)
        before = cpu_seconds(root)
        time.sleep(30)  # three heartbeats of each worker
        return (cpu_seconds(root) - before) / 30 * 100


def measure(samples: int = 200, idle_samples: int = 25) -> tuple[list[tuple[str, str]], float]:
    """liteq alone, for bench/run.py: pick-up after short and after long idle gaps, and the
    idle CPU, on a fresh file. Returns (phase, "p50 … max") pairs and the idle CPU of
    supervisor + worker, in % of a core.
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
                q = quantiles([float(x) for x in out.read_text().split()])
                latencies.append(
                    (
                        f"pickup latency, worker {name}, {count} jobs",
                        f"p50 {q['p50']:.1f} ms, p90 {q['p90']:.1f} ms, "
                        f"p99 {q['p99']:.1f} ms, max {q['max']:.1f} ms",
                    )
                )
            time.sleep(3)
            root = psutil.Process(work.pid)
            before = cpu_seconds(root)
            time.sleep(10)
            return latencies, (cpu_seconds(root) - before) / 10 * 100
        finally:
            os.killpg(work.pid, signal.SIGTERM)
            work.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=25, help="jobs per system")
    parser.add_argument("--gap", type=float, nargs=2, default=(2.2, 2.6), help="idle, s")
    parser.add_argument("--only", nargs="+", choices=SYSTEMS, default=SYSTEMS)
    parser.add_argument("--redis", default="redis://localhost:6379/12", help="an empty db")
    parser.add_argument("--peers", type=Path, default=ROOT / "bench" / ".peers")
    parser.add_argument(
        "--idle-workers", type=int, default=4, help="then the idle CPU of N liteq workers"
    )
    args = parser.parse_args()
    gap = (args.gap[0], args.gap[1])
    peers = None
    if {"huey", "celery"} & set(args.only):
        peers = peers_python(args.peers, "huey, celery, redis")
    results = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for module, source in MODULES.items():
            (tmp / f"{module}.py").write_text(textwrap.dedent(source))
        base = {**os.environ, "BENCH_REDIS": args.redis, "PYTHONPATH": str(tmp)}
        if peers is not None:
            redis = [str(peers), "-c", REDIS]
            out = subprocess.run([*redis, "check"], env=base, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr.strip())
            versions = subprocess.run(
                [
                    str(peers),
                    "-c",
                    "import huey, celery; print(huey.__version__, celery.__version__)",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            print(f"Redis {out.stdout.strip()}, huey {versions[0]}, Celery {versions[1]}")
        for system in args.only:
            env = dict(base)
            python = peers if system in ("huey", "celery") else Path(sys.executable)
            assert python is not None
            if system.startswith("liteq"):
                env["BENCH_DB"] = str(tmp / f"{system}.sqlite")
                env["PYTHONPATH"] = str(ROOT)
            if system == "liteq-poll":
                env["LITEQ_NO_INOTIFY"] = "1"
            try:
                results[system] = measure_system(system, tmp, python, env, args.samples, gap)
            finally:
                if system in ("huey", "celery") and peers is not None:
                    subprocess.run([str(peers), "-c", REDIS, "flush"], env=env, check=True)
            print(f"  {system} done", file=sys.stderr, flush=True)
        idle = {}
        for system in ("liteq", "liteq-poll"):
            if system in args.only and args.idle_workers:
                env = {**base, "PYTHONPATH": str(ROOT), "BENCH_DB": str(tmp / f"idle-{system}")}
                if system == "liteq-poll":
                    env["LITEQ_NO_INOTIFY"] = "1"
                idle[system] = idle_cpu(tmp, env, args.idle_workers)
    report(results, args.samples, gap)
    for system, cpu in idle.items():
        print(
            f"idle CPU, {system}, supervisor + {args.idle_workers} workers: {cpu:.2f} % of a core"
        )


def report(
    results: dict[str, tuple[list[float], float | None]], samples: int, gap: tuple[float, float]
) -> None:
    base = quantiles(results["floor"][0])["p50"] if "floor" in results else None
    print(f"\nidle pick-up, {samples} jobs each {gap[0]}-{gap[1]} s apart (ms); idle CPU 10 s")
    print(
        f"{'system':<12}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'p50/floor':>11}{'idle CPU':>10}"
    )
    for system, (delays, idle_cpu) in results.items():
        q = quantiles(delays)
        ratio = f"{q['p50'] / base:.1f}x" if base else "-"
        cpu = "-" if idle_cpu is None else f"{idle_cpu:.2f} %"
        print(
            f"{system:<12}{q['p50']:>8.2f}{q['p90']:>8.2f}{q['p99']:>8.2f}{q['max']:>8.2f}"
            f"{ratio:>11}{cpu:>10}"
        )


if __name__ == "__main__":
    main()
