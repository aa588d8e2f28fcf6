"""Coroutine jobs (`async def`) in one worker process, beside procrastinate and arq.

    python bench/coroutines.py                          # about 35 minutes
    python bench/coroutines.py --concurrency 10 100 --rounds 1
    python bench/coroutines.py --only liteq-sqlite arq --jobs 500

2,000 jobs that each `await asyncio.sleep(0.05)` (50 ms of I/O) run in one worker process at
concurrency 1, 10 and 100; the ideal is N / 0.05 s: 20, 200 and 2,000 jobs/s. Each run
enqueues every job with no worker running, then starts the worker in its run-until-empty
mode (`liteq work --concurrency N --burst`, `procrastinate worker --concurrency N
--one-shot`, `arq --burst` with `max_jobs = N`); the clock runs from the end of the enqueue
to the end of the last job's body (each job stamps a file when it starts and ends), so the
worker's start-up counts, the same way for each. Every job must have run exactly once.
arq at its defaults runs fewer jobs at low concurrency (at most 100 per slot): its poll, not
the jobs, sets its pace; "arq-poll" is arq polling every 5 ms. Rounds take turns (each concurrency, the systems in a rotating order) and medians are
printed, with each as a ratio of the ideal.

liteq runs on a temporary SQLite file and, on PostgreSQL, in a schema of its own;
procrastinate in a database of its own on the same server (made and dropped: the user
needs CREATEDB); arq on Redis (--redis; a database number it must find empty, flushed after
each run). The server: --dsn, else LITEQ_BENCH_POSTGRES, else what the tests use
(tests/pg.py). The peers are installed in a virtualenv of their own, bench/.peers (made on
first use with pip, kept out of the project's environment and of git); --peers names another.
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
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 0.05  # each job's await
# arq has no wake-up: it polls Redis every poll_delay (0.5 s by default) and starts at most
# max_jobs jobs per poll, so by default it runs at most 2 * max_jobs jobs/s. "arq-poll" is arq
# with a poll_delay a tenth of a job's, as a user who wants throughput would set it.
ARQ_POLL = SECONDS / 10
# arq at its defaults runs at most this many jobs per slot (100 jobs, 50 s at concurrency 1):
# its rate is its poll's, and 2,000 jobs at 2 jobs/s would take a quarter of an hour a run.
ARQ_DEFAULT_JOBS_PER_SLOT = 100
# One environment for every peer of every bench script, so the set must resolve: Celery 5.6+
# wants redis-py 6, arq wants redis-py < 6.
PEERS = (
    "procrastinate>=3",
    "arq>=0.26",
    "huey>=2.5",
    "dramatiq[redis]==2.2.*",
    "rq==3.0.*",
    "celery==5.5.*",
    "kombu[redis]==5.5.*",
    "redis[hiredis]>=4.2,<6",
    "pgqueuer==1.6.*",
)
SYSTEMS = "liteq-sqlite", "liteq-postgres", "procrastinate", "arq", "arq-poll"
TITLES = {
    "liteq-sqlite": "liteq, SQLite",
    "liteq-postgres": "liteq, PostgreSQL",
    "procrastinate": "procrastinate",
    "arq": "arq",
    "arq-poll": f"arq, poll_delay {ARQ_POLL * 1000:.0f} ms",
}

# -- the job modules, written into the run's directory, importable by each worker ----------
COMMON = f"""
import asyncio, os, time

STAMPS = os.environ.get("BENCH_STAMPS", os.devnull)


def stamp(kind, i):
    fd = os.open(STAMPS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{{kind}} {{i}} {{time.time():.6f}}\\n".encode())
    finally:
        os.close(fd)


async def nap(i):
    stamp("s", i)
    await asyncio.sleep({SECONDS})
    stamp("e", i)
"""

MODULES = {
    "coro_common": COMMON,
    "coro_liteq": """
import liteq
from coro_common import nap as _nap

store = liteq.connect()


@store.task
async def nap(i: int) -> None:
    await _nap(i)
""",
    "coro_procrastinate": """
import os
from procrastinate import App, PsycopgConnector
from coro_common import nap as _nap

app = App(connector=PsycopgConnector(conninfo=os.environ["BENCH_PROCRASTINATE"]))


@app.task(name="nap")
async def nap(i: int) -> None:
    await _nap(i)
""",
    "coro_arq": """
import os
from arq.connections import RedisSettings
from coro_common import nap as _nap


async def nap(ctx, i):
    await _nap(i)


class WorkerSettings:
    functions = [nap]
    redis_settings = RedisSettings.from_dsn(os.environ["BENCH_REDIS"])
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "1"))
    keep_result = 0  # nothing left behind, as liteq and procrastinate here


if "BENCH_ARQ_POLL" in os.environ:
    WorkerSettings.poll_delay = float(os.environ["BENCH_ARQ_POLL"])
""",
}

# Enqueue n jobs (argv[1]), in the system's own venv, with no worker running.
ENQUEUE = {
    "liteq": """
import sys
from coro_liteq import nap
for i in range(int(sys.argv[1])):
    nap.enqueue(i)
""",
    "procrastinate": """
import logging, sys
logging.getLogger("procrastinate").setLevel(logging.ERROR)
from coro_procrastinate import app, nap
with app.open():
    nap.batch_defer(*({"i": i} for i in range(int(sys.argv[1]))))
""",
    "arq": """
import asyncio, sys
from arq import create_pool
from coro_arq import WorkerSettings

async def main():
    redis = await create_pool(WorkerSettings.redis_settings)
    for i in range(int(sys.argv[1])):
        await redis.enqueue_job("nap", i)
    await redis.aclose()

asyncio.run(main())
""",
}

# Before the first run: the Redis database must be empty (it is ours to flush).
REDIS_EMPTY = """
import asyncio, os, sys
from redis.asyncio import Redis

async def main():
    r = Redis.from_url(os.environ["BENCH_REDIS"])
    if sys.argv[1] == "check":
        size = await r.dbsize()
        if size:
            sys.exit(f"{os.environ['BENCH_REDIS']} holds {size} keys: name an empty one (--redis)")
        print((await r.info("server"))["redis_version"])
    else:
        await r.flushdb()
    await r.aclose()

asyncio.run(main())
"""


# -- the peers' environment ----------------------------------------------------------------
def peers_python(venv: Path, imports: str = "") -> Path:
    """The peers' interpreter, made with pip on first use (a venv of its own, ignored by git).
    `imports` ("huey, celery", say): the modules the caller needs; if one is missing (the
    environment was made before that peer joined PEERS), every peer is installed again."""
    python = venv / "bin" / "python"
    made = not python.exists()
    if made:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    check = [str(python), "-c", f"import {imports}"]
    if made or (imports and subprocess.run(check, capture_output=True).returncode):
        print(f"installing {', '.join(PEERS)} into {venv} ...", flush=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PEERS], check=True, stdout=sys.stderr
        )
    (venv / ".gitignore").write_text("*\n")
    return python


def peer_versions(python: Path) -> str:
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; "
            "print(*(f'{p} {m.version(p)}' for p in ('procrastinate', 'arq', 'redis')), sep=', ')",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


# -- servers ---------------------------------------------------------------------------------
def server(dsn: str | None) -> str:
    found = dsn or os.environ.get("LITEQ_BENCH_POSTGRES")
    if found:
        return found
    sys.path.insert(0, str(ROOT))
    from tests import pg  # the tests' own finder (and throwaway cluster)

    found = pg.server()
    if found is None:
        raise SystemExit(pg.HOW)
    return found


@contextmanager
def database(dsn: str, name: str) -> Iterator[str]:
    """A database of its own on the server, dropped after: its DSN."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def drop_schema(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE".encode())


def with_schema(dsn: str, name: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}schema={name}"


# -- one run ---------------------------------------------------------------------------------
@dataclass
class Setup:
    """What every run needs: where to write, which interpreters, which servers."""

    tmp: Path
    peers: Path | None  # the peers' python
    dsn: str | None  # PostgreSQL, for liteq's schemas
    procrastinate: str | None  # procrastinate's own database
    redis: str | None


@dataclass
class Result:
    rate: float  # jobs/s, end of enqueue to end of the last job
    startup: float  # s, end of enqueue to the start of the first job
    running: float  # jobs/s, start of the first job to end of the last: start-up left out


def command(system: str, setup: Setup, concurrency: int) -> tuple[list[str], list[str]]:
    """The enqueue and the worker command lines of one system."""
    if system.startswith("liteq"):
        python = sys.executable
        worker = [
            python,
            "-m",
            "liteq",
            "work",
            "--import",
            "coro_liteq",
            "--concurrency",
            str(concurrency),
            "--burst",
            "--no-jitter",
            "-q",
        ]
        return [python, "-c", ENQUEUE["liteq"]], worker
    assert setup.peers is not None
    python = str(setup.peers)
    if system == "procrastinate":
        worker = [
            str(setup.peers.parent / "procrastinate"),
            "--app=coro_procrastinate.app",
            "worker",
            "--concurrency",
            str(concurrency),
            "--one-shot",
            "--delete-jobs",
            "always",
        ]
    else:
        worker = [str(setup.peers.parent / "arq"), "coro_arq.WorkerSettings", "--burst"]
    return [python, "-c", ENQUEUE[system.split("-")[0]]], worker


def fresh(system: str, setup: Setup, env: dict[str, str], run_id: str) -> None:
    """Empty queue state for one run, named in env."""
    if system == "liteq-sqlite":
        env["LITEQ_URL"] = str(setup.tmp / f"{run_id}.sqlite")
    elif system == "liteq-postgres":
        assert setup.dsn is not None
        env["LITEQ_URL"] = with_schema(setup.dsn, f"bench_coro_{run_id}")
    elif system == "procrastinate":
        assert setup.procrastinate is not None
        env["BENCH_PROCRASTINATE"] = setup.procrastinate
        with psycopg.connect(setup.procrastinate, autocommit=True) as conn:
            conn.execute(
                b"TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers,"
                b" procrastinate_periodic_defers RESTART IDENTITY CASCADE"
            )
    else:
        assert setup.redis is not None
        assert setup.peers is not None
        env["BENCH_REDIS"] = setup.redis
        if system == "arq-poll":
            env["BENCH_ARQ_POLL"] = str(ARQ_POLL)
        subprocess.run([str(setup.peers), "-c", REDIS_EMPTY, "flush"], env=env, check=True)


def measure(system: str, setup: Setup, concurrency: int, n: int) -> Result:
    """One run: enqueue n jobs, then time one worker process running them all."""
    run_id = f"{os.getpid()}_{random.randrange(1 << 30)}"
    stamps = setup.tmp / f"{run_id}.stamps"
    env = dict(os.environ, BENCH_STAMPS=str(stamps), BENCH_CONCURRENCY=str(concurrency))
    env["PYTHONPATH"] = str(setup.tmp)
    fresh(system, setup, env, run_id)
    enqueue, worker = command(system, setup, concurrency)
    log = setup.tmp / f"{run_id}.log"
    try:
        subprocess.run([*enqueue, str(n)], cwd=setup.tmp, env=env, check=True)
        began = time.time()
        with log.open("w") as out:
            done = subprocess.run(
                worker,
                cwd=setup.tmp,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=n * SECONDS / concurrency * 10 + 120,
                check=False,
            )
        starts, ends = [], {}
        for line in stamps.read_text().splitlines():
            kind, i, at = line.split()
            if kind == "s":
                starts.append(float(at))
            else:
                assert i not in ends, f"{system}: job {i} ran twice"
                ends[i] = float(at)
        if done.returncode or len(ends) != n:
            raise RuntimeError(
                f"{system} at concurrency {concurrency}: worker exit {done.returncode}, "
                f"{len(ends)} of {n} jobs ran; its log:\n{log.read_text()[-3000:]}"
            )
        last = max(ends.values())
        return Result(n / (last - began), min(starts) - began, n / (last - min(starts)))
    finally:
        if system == "liteq-postgres":
            assert setup.dsn is not None
            drop_schema(setup.dsn, f"bench_coro_{run_id}")
        for path in setup.tmp.glob(f"{run_id}*"):
            path.unlink()


# -- the run ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--dsn", help="PostgreSQL server (a database we may create in)")
    parser.add_argument("--redis", default="redis://localhost:6379/13", help="an empty db")
    parser.add_argument("--peers", type=Path, default=ROOT / "bench" / ".peers")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # clean up on the way out
    systems = [s for s in SYSTEMS if s in args.only]
    on_pg = {"liteq-postgres", "procrastinate"} & set(systems)
    peers = {"procrastinate", "arq", "arq-poll"} & set(systems)

    with tempfile.TemporaryDirectory(prefix="liteq-coro-") as tmp, ExitStack() as stack:
        for name, source in MODULES.items():
            (Path(tmp) / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
        python = peers_python(args.peers) if peers else None
        dsn = server(args.dsn) if on_pg else None
        setup = Setup(Path(tmp), python, dsn, None, None)
        notes = [f"{args.jobs:,} jobs of {SECONDS * 1000:.0f} ms, {args.rounds} round(s)"]
        if python is not None:
            notes.append(peer_versions(python))
        if "procrastinate" in systems:
            assert dsn is not None
            assert python is not None
            name = f"bench_coro_procrastinate_{os.getpid()}"
            setup.procrastinate = stack.enter_context(database(dsn, name))
            subprocess.run(
                [str(python.parent / "procrastinate"), "schema", "--apply"],
                env=dict(os.environ, PROCRASTINATE_APP="coro_procrastinate.app")
                | {"BENCH_PROCRASTINATE": setup.procrastinate, "PYTHONPATH": tmp},
                cwd=tmp,
                check=True,
                capture_output=True,
            )
        if {"arq", "arq-poll"} & set(systems):
            assert python is not None
            setup.redis = args.redis
            env = dict(os.environ, BENCH_REDIS=args.redis)
            got = subprocess.run(
                [str(python), "-c", REDIS_EMPTY, "check"], env=env, capture_output=True, text=True
            )
            if got.returncode:
                raise SystemExit(got.stderr.strip().splitlines()[-1])
            notes.append(f"Redis {got.stdout.strip()}")
            stack.callback(
                subprocess.run, [str(python), "-c", REDIS_EMPTY, "flush"], env=env, check=True
            )
        if dsn is not None:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(b"SHOW server_version").fetchone()
            notes.append(f"PostgreSQL {row[0] if row else '?'}")
        print("; ".join(notes), flush=True)

        runs: dict[tuple[str, int], list[Result]] = {}
        failed: dict[str, str] = {}
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                turn = round_ % len(systems)
                for system in systems[turn:] + systems[:turn]:
                    if system in failed:
                        continue
                    n = args.jobs
                    if system == "arq":
                        n = min(n, ARQ_DEFAULT_JOBS_PER_SLOT * concurrency)
                    try:
                        got_ = measure(system, setup, concurrency, n)
                    except (RuntimeError, subprocess.SubprocessError) as e:
                        failed[system] = str(e)
                        print(f"{system} failed: {e}", file=sys.stderr, flush=True)
                        continue
                    runs.setdefault((system, concurrency), []).append(got_)
                    print(
                        json.dumps(
                            {
                                "round": round_ + 1,
                                "system": system,
                                "concurrency": concurrency,
                                "jobs": n,
                                "jobs/s": round(got_.rate, 1),
                                "startup s": round(got_.startup, 3),
                                "running jobs/s": round(got_.running, 1),
                            }
                        ),
                        flush=True,
                    )
        report(systems, args.concurrency, runs)


def report(
    systems: list[str], levels: list[int], runs: dict[tuple[str, int], list[Result]]
) -> None:
    """The medians as tables: jobs/s and the ratio to the ideal, start-up in and left out."""
    for title, field in (
        ("end of enqueue to end of the last job (the measure)", "rate"),
        ("start of the first job to end of the last (start-up left out)", "running"),
    ):
        print(f"\n{title}:\n")
        print("| concurrency | ideal | " + " | ".join(TITLES[s] for s in systems) + " |")
        print("|---|---|" + "---|" * len(systems))
        for level in levels:
            ideal = level / SECONDS
            cells = []
            for system in systems:
                got = runs.get((system, level))
                if not got:
                    cells.append("—")
                    continue
                rate = statistics.median(getattr(r, field) for r in got)
                cells.append(f"{rate:,.0f} jobs/s ({rate / ideal:.2f})")
            print(f"| {level} | {ideal:,.0f} jobs/s | " + " | ".join(cells) + " |")
    startups = []
    for system in systems:
        got_ = [r.startup for (s, _), rs in runs.items() if s == system for r in rs]
        if got_:
            startups.append(f"{TITLES[system]} {statistics.median(got_):.2f} s")
    print(f"\nmedian start-up (enqueue done to first job started): {', '.join(startups)}")


if __name__ == "__main__":
    main()
