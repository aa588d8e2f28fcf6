"""liteq beside every peer, each with its own worker command at its defaults, column by column.

    python bench/peers.py                         # about 35 minutes
    python bench/peers.py --quick                 # 2,000 jobs, one round: a smoke run
    python bench/peers.py --only liteq-sqlite huey --rounds 1

The systems: liteq on SQLite and on PostgreSQL, huey, dramatiq, RQ and Celery on Redis,
pgqueuer on PostgreSQL. For each, in one run:

- enqueue, one at a time: a client process enqueues 20,000 no-op jobs in a loop (jobs/s,
  timed in that process from its first enqueue to its last; a lazy connection counts);
- enqueue in bulk: the same through the library's bulk call, 1,000 jobs a call (liteq
  `enqueue_many`, huey `task.map`, dramatiq `group(...).run()`, RQ `enqueue_many`,
  pgqueuer `Queries.enqueue` with lists); Celery has none: "n/a";
- drain, 1 and 2 worker processes: the library's worker command at its defaults drains the
  20,000 jobs just enqueued, timed from its start (start-up included) until the last job has
  run (each job appends one byte to a file, read every 2 ms; the byte is the only work of a
  "no-op" job, the same for every system): `liteq work --burst [-n 2]`, `huey_consumer
  [-k process -w 2]`, `dramatiq -p 1|2`, `rq worker --burst` / `rq worker-pool -n 2
  --burst`, `celery worker -c 1|2`, pgqueuer's drain mode in 1 or 2 processes. Workers
  with no run-until-empty mode get SIGTERM once the count is reached;
- idle pick-up p50/p99: bench/pickup.py's measure (its worker commands and jobs for liteq,
  huey and Celery; here the others'): jobs enqueued one at a time after idle gaps of
  2.2-2.6 s, each stamping how long after its enqueue it started; the samples of all rounds
  are pooled.

Rounds take turns (the systems in a rotating order) and medians of the rounds are printed
as a markdown table, with a line per column: liteq's best over the best peer's.

Redis: --redis, a database number that must be empty at the start (flushed after each
system's turn; nothing else is touched). PostgreSQL: --dsn, else LITEQ_BENCH_POSTGRES, else
what the tests use (tests/pg.py); liteq runs in schemas of its own and pgqueuer in
databases of its own (the user needs CREATEDB), dropped after. The peers run from the
virtualenv bench/.peers (bench/coroutines.py's, made with its pinned PEERS on first use);
--peers names another.
"""

from __future__ import annotations

import argparse
import json
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import liteq  # noqa: E402 - this checkout's
from bench import pickup  # noqa: E402 - needs the path set above
from bench.coroutines import database, drop_schema, peers_python, server  # noqa: E402
from bench.coroutines import with_schema as schema_url  # noqa: E402

SYSTEMS = "liteq-sqlite", "liteq-postgres", "huey", "dramatiq", "rq", "celery", "pgqueuer"
TITLES = {
    "liteq-sqlite": "liteq, SQLite",
    "liteq-postgres": "liteq, PostgreSQL",
    "huey": "huey, Redis",
    "dramatiq": "dramatiq, Redis",
    "rq": "RQ, Redis",
    "celery": "Celery, Redis",
    "pgqueuer": "pgqueuer, PostgreSQL",
}
COLUMNS = "enqueue", "enqueue bulk", "drain 1", "drain 2", "pick-up p50", "pick-up p99"
HEADS = {
    "enqueue": "enqueue, one at a time",
    "enqueue bulk": "enqueue, bulk",
    "drain 1": "drain, 1 process",
    "drain 2": "drain, 2 processes",
    "pick-up p50": "idle pick-up p50",
    "pick-up p99": "idle pick-up p99",
}
LATENCIES = {"pick-up p50", "pick-up p99"}  # lower is better; the rest are jobs/s
BATCH = 1000  # jobs per bulk call
VERSIONS = "huey", "dramatiq", "rq", "celery", "kombu", "redis", "pgqueuer", "psycopg"

# -- the jobs: modules written into the run's directory, imported by clients and workers ---
MODULES = {
    "peers_common": """
import os, time

_fd = None


def done():
    # One byte per job run, appended: the file's size counts the jobs done in every process.
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["BENCH_DONE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, b".")


def stamp(path, enqueued_at):
    delay = time.time() - enqueued_at
    with open(path, "a") as f:
        f.write(f"{delay:.6f}\\n")
""",
    "peers_liteq": """
import liteq
from peers_common import done


class Noop(liteq.Job):
    def run(self, job):
        done()
""",
    "peers_huey": """
import os
from huey import RedisHuey
from peers_common import done

huey = RedisHuey("peers", url=os.environ["BENCH_REDIS"])


@huey.task()
def noop():
    done()
""",
    "peers_dramatiq": """
import os
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from peers_common import done, stamp as _stamp

dramatiq.set_broker(RedisBroker(url=os.environ["BENCH_REDIS"]))


@dramatiq.actor
def noop():
    done()


@dramatiq.actor
def stamp(path, enqueued_at):
    _stamp(path, enqueued_at)
""",
    "peers_rq": """
import os
from redis import Redis
from rq import Queue
from peers_common import done, stamp

queue = Queue(connection=Redis.from_url(os.environ["BENCH_REDIS"]))


def noop():
    done()
""",
    "peers_celery": """
import os
from celery import Celery
from peers_common import done

app = Celery("peers", broker=os.environ["BENCH_REDIS"])


@app.task(ignore_result=True)
def noop():
    done()
""",
    "peers_pgq": """
import asyncio, json, os, sys
from contextlib import asynccontextmanager

import psycopg
import pgqueuer
from pgqueuer import PgQueuer, PsycopgDriver, Queries
from pgqueuer.types import QueueExecutionMode
from peers_common import done, stamp as _stamp


@asynccontextmanager
async def main():
    conn = await psycopg.AsyncConnection.connect(os.environ["BENCH_DSN"], autocommit=True)
    pgq = PgQueuer(PsycopgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job):
        done()

    @pgq.entrypoint("stamp")
    async def stamp(job):
        _stamp(*json.loads(job.payload))

    yield pgq
    await conn.close()


class Client:
    # pgqueuer's client is async: this one runs it on a loop of its own, call by call.
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        conn = self.loop.run_until_complete(
            psycopg.AsyncConnection.connect(os.environ["BENCH_DSN"], autocommit=True)
        )
        self.queries = Queries(PsycopgDriver(conn))

    def enqueue(self, names, payloads):
        self.loop.run_until_complete(self.queries.enqueue(names, payloads, [0] * len(names)))

    def stamp(self, path, enqueued_at):
        self.enqueue(["stamp"], [json.dumps([path, enqueued_at]).encode()])


if __name__ == "__main__":  # (pgqueuer 1.6.0's `pgq run` fails at its default log level)
    asyncio.run(pgqueuer.run("peers_pgq:main", mode=QueueExecutionMode[sys.argv[1]]))
""",
}

# A client: set up, then enqueue n jobs one at a time or `bulk` a call; prints jobs/s.
CLIENT = """
import sys, time
n, bulk = int(sys.argv[1]), int(sys.argv[2])
{setup}
began = time.perf_counter()
if bulk:
    for i in range(0, n, bulk):
        k = min(bulk, n - i)
        {bulk}
else:
    for i in range(n):
        {one}
print(n / (time.perf_counter() - began))
"""
LITEQ_CLIENT = (
    "import liteq; from peers_liteq import Noop; store = liteq.connect()",
    "store.enqueue(Noop())",
    "store.enqueue_many([Noop() for _ in range(k)])",
)
# Each system's (setup, one enqueue, one bulk call of k jobs or None).
CLIENTS: dict[str, tuple[str, str, str | None]] = {
    "liteq-sqlite": LITEQ_CLIENT,
    "liteq-postgres": LITEQ_CLIENT,
    "huey": ("from peers_huey import noop", "noop()", "noop.map(() for _ in range(k))"),
    "dramatiq": (
        "from dramatiq import group; from peers_dramatiq import noop",
        "noop.send()",
        "group(noop.message() for _ in range(k)).run()",
    ),
    "rq": (
        "from peers_rq import noop, queue",
        "queue.enqueue(noop)",
        "queue.enqueue_many([queue.prepare_data(noop) for _ in range(k)])",
    ),
    "celery": ("from peers_celery import noop", "noop.delay()", None),
    "pgqueuer": (
        "from peers_pgq import Client; client = Client()",
        'client.enqueue(["noop"], [None])',
        'client.enqueue(["noop"] * k, [None] * k)',
    ),
}
# pickup.py's driver code for the systems it has no job of: (setup, enqueue one stamp).
PICKUP_DRIVERS = {
    "dramatiq": ("from peers_dramatiq import stamp", "stamp.send(out, time.time())"),
    "rq": ("from peers_rq import queue, stamp", "queue.enqueue(stamp, out, time.time())"),
    "pgqueuer": (
        "from peers_pgq import Client; client = Client()",
        "client.stamp(out, time.time())",
    ),
}
# Workers that stop by themselves once the queue is empty; the others get SIGTERM.
BURST = {"liteq-sqlite", "liteq-postgres", "rq", "pgqueuer"}


@dataclass
class Setup:
    """What every measure needs: where to write, which interpreters and servers."""

    tmp: Path
    peers: Path | None
    dsn: str | None
    redis: str
    results: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    delays: dict[str, list[float]] = field(default_factory=dict)


def workers(system: str, setup: Setup, processes: int) -> list[list[str]]:
    """The worker command lines that make `processes` worker processes, at defaults."""
    if system.startswith("liteq"):
        command = [sys.executable, "-m", "liteq", "work", "--import", "peers_liteq"]
        return [[*command, "--burst", "-q", *(["--processes", "2"] if processes == 2 else [])]]
    assert setup.peers is not None
    bin_ = setup.peers.parent
    if system == "huey":
        extra = ["-k", "process", "-w", "2"] if processes == 2 else []
        return [[str(bin_ / "huey_consumer"), "peers_huey.huey", *extra]]
    if system == "dramatiq":
        return [[str(bin_ / "dramatiq"), "peers_dramatiq", "-p", str(processes)]]
    if system == "rq":
        if processes == 1:
            return [[str(bin_ / "rq"), "worker", "--burst", "-u", setup.redis]]
        return [[str(bin_ / "rq"), "worker-pool", "-n", "2", "--burst", "-u", setup.redis]]
    if system == "celery":
        command = [str(bin_ / "celery"), "-A", "peers_celery", "worker", "-c", str(processes)]
        return [[*command, "--loglevel", "WARNING"]]
    return [[str(setup.peers), "peers_pgq.py", "drain"] for _ in range(processes)]


def fill(system: str, setup: Setup, env: dict[str, str], n: int, bulk: bool) -> float | None:
    """Enqueue n jobs from a client process: its jobs/s, None if it has no bulk call."""
    setup_code, one, many = CLIENTS[system]
    if bulk and many is None:
        fill(system, setup, env, n, bulk=False)  # the next drain's jobs, not a measure
        return None
    code = CLIENT.format(setup=setup_code, one=one, bulk=many)
    python = sys.executable if system.startswith("liteq") else str(setup.peers)
    args = [str(n), str(BATCH if bulk else 0)]
    out = subprocess.run(
        [python, "-c", code, *args], cwd=setup.tmp, env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"{system}'s client failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.split()[-1])


def drain(system: str, setup: Setup, env: dict[str, str], n: int, processes: int) -> float:
    """Jobs/s of the worker command draining the n jobs queued, from its start (start-up
    included) until the n-th job has run."""
    done = Path(env["BENCH_DONE"])
    done.write_bytes(b"")
    log = setup.tmp / f"{system}.log"
    with log.open("w") as out:
        began = time.perf_counter()
        procs = [
            subprocess.Popen(
                command,
                cwd=setup.tmp,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for command in workers(system, setup, processes)
        ]
        try:
            deadline = time.monotonic() + n / 50 + 60
            while done.stat().st_size < n:
                codes = [p.poll() for p in procs]
                # (a worker that exits, even by itself with 0, before the count: a failure)
                ended = any(c not in (None, 0) for c in codes) or None not in codes
                if (ended and done.stat().st_size < n) or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{system}, {processes} process(es): {done.stat().st_size} of {n} "
                        f"jobs ran; its log:\n{log.read_text()[-3000:]}"
                    )
                time.sleep(0.002)
            took = time.perf_counter() - began
        finally:
            for proc in procs:
                stop(proc, system in BURST)
    ran = done.stat().st_size
    if ran != n:
        raise RuntimeError(f"{system}, {processes} process(es): {ran} runs of {n} jobs")
    return n / took


def stop(proc: subprocess.Popen[bytes], exits: bool) -> None:
    """Let a run-until-empty worker exit by itself; stop the others with SIGTERM."""
    if exits:
        try:
            proc.wait(60)
            return
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        pickup.end_group(proc)


@contextmanager
def store(system: str, setup: Setup, env: dict[str, str], turn: str) -> Iterator[None]:
    """Empty queue state for one system's turn, named in env; gone after."""
    if system == "liteq-sqlite":
        env["LITEQ_URL"] = env["BENCH_DB"] = str(setup.tmp / f"{turn}.sqlite")
        liteq.connect(env["LITEQ_URL"]).close()  # its schema made, as pgqueuer's install
        yield
    elif system == "liteq-postgres":
        assert setup.dsn is not None
        name = f"bench_peers_{turn}"
        env["LITEQ_URL"] = env["BENCH_DB"] = schema_url(setup.dsn, name)
        try:
            liteq.connect(env["LITEQ_URL"]).close()
            yield
        finally:
            drop_schema(setup.dsn, name)
    elif system == "pgqueuer":
        assert setup.dsn is not None
        assert setup.peers is not None
        with database(setup.dsn, f"bench_peers_{turn}") as dsn:
            env["BENCH_DSN"] = dsn
            install = [str(setup.peers.parent / "pgq"), "--pg-dsn", dsn, "install"]
            subprocess.run(install, check=True, env=env, capture_output=True)
            yield
    else:
        redis(setup, env, "flush")
        try:
            yield
        finally:
            redis(setup, env, "flush")


def redis(setup: Setup, env: dict[str, str], what: str) -> str:
    """pickup.py's check that the Redis database is empty (Redis's version), or its flush."""
    assert setup.peers is not None
    out = subprocess.run(
        [str(setup.peers), "-c", pickup.REDIS, what], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(out.stderr.strip().splitlines()[-1])
    return out.stdout.strip()


def turn(system: str, setup: Setup, n: int, samples: int, gap: tuple[float, float]) -> None:
    """One round of one system: enqueue one at a time, drain with one process, enqueue in
    bulk, drain with two; then the idle pick-up."""
    turn_id = f"{os.getpid()}_{random.randrange(1 << 30)}"
    env = dict(os.environ, BENCH_REDIS=setup.redis, BENCH_DONE=str(setup.tmp / f"{turn_id}.done"))
    env["PYTHONPATH"] = os.pathsep.join([str(setup.tmp), str(ROOT)])
    got: dict[str, float | None] = {}
    with store(system, setup, env, turn_id):
        got["enqueue"] = fill(system, setup, env, n, bulk=False)
        got["drain 1"] = drain(system, setup, env, n, 1)
        got["enqueue bulk"] = fill(system, setup, env, n, bulk=True)
        got["drain 2"] = drain(system, setup, env, n, 2)
        if samples:
            setup.delays.setdefault(system, []).extend(pick_up(system, setup, env, samples, gap))
    for column, value in got.items():
        if value is not None:
            setup.results.setdefault((system, column), []).append(value)
    print(json.dumps({"system": system, **{k: v and round(v) for k, v in got.items()}}))


def pick_up(
    system: str, setup: Setup, env: dict[str, str], samples: int, gap: tuple[float, float]
) -> list[float]:
    """bench/pickup.py's idle pick-up of one system: its delays, in seconds."""
    if system.startswith("liteq"):
        env = dict(env, PYTHONPATH=str(ROOT))
        python, peer = Path(sys.executable), None
    else:
        assert setup.peers is not None
        python = setup.peers
        peer = None
        if system in PICKUP_DRIVERS:
            command = workers(system, setup, 1)[0]
            if system == "rq":
                command.remove("--burst")
            elif system == "pgqueuer":
                command[-1] = "continuous"
            peer = command, PICKUP_DRIVERS[system]
    try:
        delays, _ = pickup.measure_system(
            system, setup.tmp, python, env, samples, gap, peer=peer, idle=False
        )
    except SystemExit as e:  # (pickup.py's way to say a worker never started)
        raise RuntimeError(str(e)) from e
    if len(delays) < samples:
        raise RuntimeError(f"{system}: {len(delays)} of {samples} pick-ups within 30 s")
    return delays


# -- the run ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8, help="idle pick-ups a round")
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, one round")
    parser.add_argument("--only", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--dsn", help="PostgreSQL server (a database we may create in)")
    parser.add_argument("--redis", default="redis://localhost:6379/14", help="an empty db")
    parser.add_argument("--peers", type=Path, default=ROOT / "bench" / ".peers")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.rounds, args.samples = 2_000, 1, 4
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # clean up on the way out
    systems = [s for s in SYSTEMS if s in args.only]
    gap = (2.2, 2.6)  # pickup.py's idle gaps
    with tempfile.TemporaryDirectory(prefix="liteq-peers-") as tmp, ExitStack() as stack:
        for name, source in {**MODULES, **pickup.MODULES}.items():
            (Path(tmp) / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
        peers = None
        if any(not s.startswith("liteq") for s in systems):
            peers = peers_python(args.peers, "huey, dramatiq, rq, celery, pgqueuer")
        on_pg = {"liteq-postgres", "pgqueuer"} & set(systems)
        setup = Setup(Path(tmp), peers, server(args.dsn) if on_pg else None, args.redis)
        notes = [about(setup, systems, stack)]
        notes.append(f"{args.jobs:,} jobs, {args.rounds} round(s), {args.samples} pick-ups a round")
        print("; ".join(notes), flush=True)
        failed: dict[str, str] = {}
        for round_ in range(args.rounds):
            order = systems[round_ % len(systems) :] + systems[: round_ % len(systems)]
            for system in order:
                if system in failed:
                    continue
                try:
                    turn(system, setup, args.jobs, args.samples, gap)
                except (RuntimeError, subprocess.SubprocessError) as e:
                    failed[system] = str(e)
                    print(f"{system} failed: {e}", file=sys.stderr, flush=True)
        print(f"\n{'; '.join(notes)}\n")
        report(systems, setup)
        for system, why in failed.items():
            print(f"\n{system} failed: {why.splitlines()[0]}")


def about(setup: Setup, systems: list[str], stack: ExitStack) -> str:
    """The versions of the servers and the peers; checks that the Redis database is empty
    (and flushes it after the run)."""
    parts = [f"liteq {liteq.__version__}"]
    if setup.peers is not None:
        code = (
            "import importlib.metadata as m; "
            f"print(', '.join(f'{{p}} {{m.version(p)}}' for p in {VERSIONS!r}))"
        )
        out = subprocess.run([str(setup.peers), "-c", code], capture_output=True, text=True)
        parts.append(out.stdout.strip())
        env = dict(os.environ, BENCH_REDIS=setup.redis)
        parts.append(f"Redis {redis(setup, env, 'check')} ({setup.redis})")
        stack.callback(redis, setup, env, "flush")
    if setup.dsn is not None:
        with psycopg.connect(setup.dsn) as conn:
            row = conn.execute(b"SHOW server_version").fetchone()
        parts.append(f"PostgreSQL {row[0] if row else '?'}")
    if "liteq-sqlite" in systems:
        import apsw

        parts.append(f"SQLite {apsw.sqlite_lib_version()}")
    return ", ".join(parts)


def report(systems: list[str], setup: Setup) -> None:
    """The medians as a markdown table, and liteq's best over the best peer's per column."""
    values: dict[tuple[str, str], float] = {}
    for (system, column), got in setup.results.items():
        values[system, column] = statistics.median(got)
    for system, delays in setup.delays.items():
        q = pickup.quantiles(delays)
        values[system, "pick-up p50"], values[system, "pick-up p99"] = q["p50"], q["p99"]
    print("| system | " + " | ".join(HEADS[c] for c in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for system in systems:
        cells = [cell(values.get((system, c)), c) for c in COLUMNS]
        print(f"| {TITLES[system]} | " + " | ".join(cells) + " |")
    ratios = []
    for column in COLUMNS:
        ours = [v for (s, c), v in values.items() if c == column and s.startswith("liteq")]
        theirs = [v for (s, c), v in values.items() if c == column and not s.startswith("liteq")]
        if not ours or not theirs:
            ratios.append("—")
            continue
        pick = min if column in LATENCIES else max
        ratio = pick(ours) / pick(theirs)
        ahead = ratio < 1 if column in LATENCIES else ratio > 1
        ratios.append(f"{ratio:.2f} ({'ahead' if ahead else 'behind'})")
    print("| liteq best / best peer | " + " | ".join(ratios) + " |")
    pooled = {s: len(d) for s, d in setup.delays.items()}
    if pooled:
        print(f"\npick-ups pooled over the rounds: {min(pooled.values())} or more a system")


def cell(value: float | None, column: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f} ms" if column in LATENCIES else f"{value:,.0f} jobs/s"


if __name__ == "__main__":
    main()
