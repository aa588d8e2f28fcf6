"""How often a Django site on SQLite meets "database is locked", with its queue in the
site's database: three processes place orders (a read, then the order and its task in one
`transaction.atomic()`) beside two liteq workers whose tasks write the site's tables too,
under Django's transaction_mode DEFERRED (its default) and IMMEDIATE; and, for comparison,
the queue in a file of its own (OPTIONS URL), where only the tasks write the site's file.

    python3 tests/django_project/venv.py     # the Django environment, once
    .venv-django/bin/python bench/django_locks.py [--orders 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1] / "tests" / "django_project"


def run(mode: str, orders: int, own_file: bool) -> tuple[list[int], float]:
    site = Path(tempfile.mkdtemp()) / "site.sqlite3"
    queue = f"sqlite:///{site.parent / 'jobs.sqlite'}" if own_file else ""
    env = {**os.environ, "SHOP_SQLITE": str(site), "SHOP_QUEUE_URL": queue, "SHOP_TXMODE": mode}
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=PROJECT, env=env, check=True)
    work = subprocess.Popen(  # (with a queue of its own, rolled-back orders' tasks fail)
        [*manage, "liteq_work", "--processes", "2", "-q"],
        cwd=PROJECT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2)  # (its workers started)
    start = time.perf_counter()
    storms = [
        subprocess.Popen(
            [*manage, "shop_storm", "--count", str(orders), "--read-first", "--label", label],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for label in "abc"
    ]
    said = [json.loads(p.communicate()[0]) for p in storms]
    took = time.perf_counter() - start
    work.terminate()
    work.wait()
    return [one["locked"] for one in said], took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=300, help="orders per process")
    args = parser.parse_args()
    for mode, own_file in (("DEFERRED", False), ("IMMEDIATE", False), ("DEFERRED", True)):
        locked, took = run(mode, args.orders, own_file)
        where = "a file of its own" if own_file else "the site's file"
        print(
            f"queue in {where:<17}, transaction_mode {mode:<9}: 'database is locked' "
            f"{sum(locked):>4} times "
            f"({', '.join(map(str, locked))}) in {3 * args.orders} orders, {took:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
