"""What the SQL stores share: named statements in .sql files, migrations, listing filters,
and the rows of the workers' registry."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import re
from collections.abc import Sequence
from typing import Any, Final

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


#: The columns of the workers' registry: WorkerInfo's fields, by name (a column is added
#: to WorkerInfo, the tables' migrations, and nowhere else).
WORKER_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(WorkerInfo))


def worker_values(info: WorkerInfo) -> dict[str, Any]:
    """A worker's row by column name, as the `register` statements take it (queues as
    JSON)."""
    row = {name: getattr(info, name) for name in WORKER_COLUMNS}
    row["queues"] = None if info.queues is None else json.dumps(list(info.queues))
    return row


def worker_of(row: Sequence[Any]) -> WorkerInfo:
    """The WorkerInfo of a row the `workers` statements select (`{worker_columns}`)."""
    fields = dict(zip(WORKER_COLUMNS, row, strict=True))
    queues = fields["queues"]
    fields["queues"] = None if queues is None else tuple(json.loads(queues))
    return WorkerInfo(**fields)
