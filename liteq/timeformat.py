"""Times as people read them: what the command line and the dashboard both print."""

from __future__ import annotations

from datetime import UTC, datetime


def when(value: datetime | None) -> str:
    """A time as the terminal's reader reads it: local date and time to the second."""
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def iso(value: datetime | float | None) -> str | None:
    """A time as JSON gives it to scripts: ISO 8601 in UTC with its offset, to the second
    (`2026-12-06T22:58:09+00:00`), from a datetime or epoch seconds; None stays None."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds")


def ago(seconds: float | None) -> str:
    """A span of seconds in words that fit a column: '45s', '12m', '3h', '2d'."""
    if seconds is None:
        return "-"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{seconds:.0f}s"
