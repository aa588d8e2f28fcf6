"""Named SQL statements kept in a .sql file beside the code that runs them."""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Sequence
from typing import Any

from liteq.stores.contract import JobQuery


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
