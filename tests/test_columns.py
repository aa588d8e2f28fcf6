"""Records are written and read by column name: a new column is one place per store.

The proof runs liteq with `Record` widened by a column (and its fields shuffled) in a
process of its own (tests/widened.py), on every store, its table given the column as a
migration would: every path must carry the column.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from liteq.record import COLUMNS, Record, evolve, values_of, with_payloads
from liteq.status import Status
from tests import pg
from tests.conftest import STORES

ROOT = Path(__file__).resolve().parents[1]


def test_record_takes_its_values_in_column_order() -> None:
    """Record(*values) builds a Record of values selected as COLUMNS (record.py's rule)."""
    parameters = list(inspect.signature(Record).parameters.values())
    assert [p.name for p in parameters] == list(COLUMNS)
    assert {p.kind for p in parameters} == {inspect.Parameter.POSITIONAL_OR_KEYWORD}
    assert [f.name for f in dataclasses.fields(Record)] == list(COLUMNS)


def test_evolve_copies_every_column() -> None:
    record = Record(*(f"value of {c}" for c in COLUMNS))
    copy = evolve(record, status=Status.QUEUED)
    assert copy is not record
    assert values_of(copy) == values_of(dataclasses.replace(record, status=Status.QUEUED))


def test_with_payloads_copies_every_column() -> None:
    template = Record(*(f"value of {c}" for c in COLUMNS))
    copies = with_payloads(template, ["first", "second"])
    assert [values_of(c) for c in copies] == [
        values_of(dataclasses.replace(template, payload=p)) for p in ("first", "second")
    ]
    assert all(c is not template for c in copies)
    copies[0].id = "changed"
    assert copies[1].id == template.id == "value of id"


@pytest.mark.parametrize("kind", [k for k in STORES if k != "sqlite-shared"])  # (one SQL)
def test_every_path_carries_a_new_column(kind: str, tmp_path: Path) -> None:
    server: list[str] = []
    if kind == "postgres":
        server = [pg.dsn_or_skip(), pg.new_schema()]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.widened", kind, str(tmp_path), *server],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        if server:
            pg.drop_schema(server[1])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"every path carried the new column ({kind})" in done.stdout
