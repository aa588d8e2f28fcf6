"""How commands print: tables that fit the terminal, JSON for scripts, progress (times:
`liteq.timeformat`, which the dashboard shares)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from liteq.timeformat import iso

#: Columns no narrower than this are shortened first when a table is too wide.
_MIN_WIDTH = 8


def error_line(message: str) -> None:
    """One mistake or refusal on stderr, in the form every command uses."""
    sys.stderr.write(f"liteq: {message}\n")


def table(head: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO | None = None) -> None:
    """Print rows under a head, in columns; the widest are shortened (…) to fit the
    terminal when the output is one."""
    out = out or sys.stdout
    cells = [[str(c) for c in head]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    room = shutil.get_terminal_size((120, 24)).columns if out.isatty() else None
    while room is not None and sum(widths) + 2 * (len(widths) - 1) > room:
        widest = max(range(len(widths)), key=widths.__getitem__)
        if widths[widest] <= _MIN_WIDTH:
            break
        widths[widest] -= 1
    for n, row in enumerate(cells):
        line = "  ".join(
            _fit(cell, width).ljust(width) for cell, width in zip(row, widths, strict=True)
        )
        out.write(line.rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def _fit(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def emit_json(value: Any, out: TextIO | None = None) -> None:
    """Print a value as JSON (datetimes as iso() gives them)."""
    write_all(
        out or sys.stdout, json.dumps(value, indent=2, default=_jsonable, ensure_ascii=False) + "\n"
    )


#: Less than a BufferedWriter's buffer (8 KiB).
_PIECE = 4096


def write_all(out: TextIO, text: str) -> None:
    """Write `text` in pieces. A write larger than the buffer goes straight to the pipe, and
    a reader that goes away in the middle of it only makes it return short, no error: the
    rest would be dropped in silence and the command end as a success. A piece goes
    through the buffer, whose flush raises BrokenPipeError."""
    for start in range(0, len(text), _PIECE):
        out.write(text[start : start + _PIECE])


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


def confirm(question: str) -> bool:
    """Ask on the terminal; False unless the answer is yes."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int | None, what: str) -> None:
        self.total = total
        self.what = what
        self.began = time.monotonic()
        self._shown = sys.stderr.isatty()

    def update(self, done: int) -> None:
        """Show `done` of the total (or, with no total, a count and the time taken)."""
        if not self._shown:
            return
        elapsed = time.monotonic() - self.began
        if self.total:
            filled = 30 * min(done, self.total) // self.total
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{self.total:,}"
        else:  # no end known: a turning bar
            bar = "|/-\\"[int(elapsed * 4) % 4]
        sys.stderr.write(f"\r{self.what} {bar} {elapsed:.1f}s")
        sys.stderr.flush()

    def done(self) -> None:
        """End the line."""
        if self._shown:
            sys.stderr.write("\n")
