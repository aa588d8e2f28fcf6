"""What the SQL stores share: named statements in .sql files, migrations, listing filters,
and the rows of the workers' registry."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import re
from collections.abc import Sequence
from typing import Any

from liteq.stores.contract import JobQuery, WorkerInfo


def read_blocks(package: str, filename: str) -> dict[str, str]:
    """{name: statement} of the `-- name: NAME` blocks of a package's .sql file, each on
    one line, comments left out."""
    text = importlib.resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    blocks: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        found = re.fullmatch(r"-- name: (\w+)", line.strip())
        if found:
            name = found.group(1)
            blocks[name] = ""
        elif name is not None and line.strip() and not line.lstrip().startswith("--"):
            blocks[name] += line.strip() + " "
    return {key: value.strip() for key, value in blocks.items()}


def filters(blocks: dict[str, str], pairs: Sequence[tuple[str, object]]) -> tuple[str, list[Any]]:
    """The `filter_NAME` clauses of `blocks` for the (NAME, value) pairs whose value is
    not None, joined in order, and their parameters."""
    given = [(name, value) for name, value in pairs if value is not None]
    return " ".join(blocks[f"filter_{name}"] for name, _ in given), [v for _, v in given]


def search_filters(query: JobQuery) -> list[tuple[str, object]]:
    """The (filter name, value) pairs of a listing's query, for filters()."""
    return [
        ("queue", query.queue),
        ("status", None if query.status is None else query.status.value),
        ("type", query.job_type),
        ("error", query.error_contains),
        ("finished_since", query.finished_since),
        ("before", query.before),
        ("after", query.after if query.before is None else None),
    ]


def numbered_scripts(package: str) -> dict[int, str]:
    """{from version N: the script to N + 1}, from a package's `migrations/NN_name.sql`."""
    found = {}
    for entry in importlib.resources.files(package).joinpath("migrations").iterdir():
        numbered = re.match(r"(\d+)_\w+\.sql$", entry.name)
        if numbered:
            found[int(numbered.group(1)) - 1] = entry.read_text(encoding="utf-8")
    return found


def worker_values(info: WorkerInfo) -> tuple[Any, ...]:
    """A worker's row in the order the `register` statements take it (queues as JSON)."""
    queues = None if info.queues is None else json.dumps(list(info.queues))
    row = dataclasses.astuple(dataclasses.replace(info, queues=None))
    return (*row[:3], queues, *row[4:])


def worker_of(row: Sequence[Any]) -> WorkerInfo:
    """The WorkerInfo of a row the `workers` statements select."""
    owner, host, pid, queues, started_at, beat_at, lease, jobs_done, current_job, rss = row
    return WorkerInfo(
        owner=owner,
        host=host,
        pid=pid,
        queues=None if queues is None else tuple(json.loads(queues)),
        started_at=started_at,
        beat_at=beat_at,
        lease=lease,
        jobs_done=jobs_done,
        current_job=current_job,
        rss=rss,
    )
