"""Charts of what workers finished, drawn on the server as SVG: no script, no library,
nothing fetched from elsewhere."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

from liteq.stores.contract import MinuteCount


@dataclasses.dataclass(frozen=True)
class Bar:
    """One minute's column: completed jobs stacked on failed attempts."""

    x: float
    width: float
    completed_y: float
    completed_h: float
    failed_y: float
    failed_h: float
    label: str


@dataclasses.dataclass(frozen=True)
class Chart:
    """What an SVG template draws: its size, bars, the largest count and totals."""

    width: int
    height: int
    bars: list[Bar]
    peak: int
    completed: int
    failed: int


def per_minute(
    rows: Iterable[MinuteCount], now: float, minutes: int = 60, queue: str | None = None
) -> list[tuple[int, int, int]]:
    """(minute, completed, failed) for each of the last `minutes` minutes up to `now`'s,
    oldest first, of one queue or all of them; a quiet minute is (minute, 0, 0)."""
    last = int(now // 60)
    counts = {m: [0, 0] for m in range(last - minutes + 1, last + 1)}
    for row in rows:
        if row.minute in counts and (queue is None or row.queue == queue):
            counts[row.minute][0] += row.completed
            counts[row.minute][1] += row.failed
    return [(m, c, f) for m, (c, f) in sorted(counts.items())]


def chart(series: list[tuple[int, int, int]], width: int = 600, height: int = 120) -> Chart:
    """Bars for a per_minute() series, scaled to the busiest minute."""
    peak = max((c + f for _, c, f in series), default=0)
    scale = (height - 2) / peak if peak else 0.0
    step = width / max(len(series), 1)
    bars = []
    for n, (minute, completed, failed) in enumerate(series):
        failed_h = failed * scale
        completed_h = completed * scale
        stamp = time.strftime("%H:%M", time.localtime(minute * 60))
        bars.append(
            Bar(
                x=round(n * step + 0.5, 2),
                width=round(max(step - 1, 1), 2),
                failed_y=round(height - failed_h, 2),
                failed_h=round(failed_h, 2),
                completed_y=round(height - failed_h - completed_h, 2),
                completed_h=round(completed_h, 2),
                label=f"{stamp}: {completed} completed, {failed} failed",
            )
        )
    return Chart(
        width=width,
        height=height,
        bars=bars,
        peak=peak,
        completed=sum(c for _, c, _ in series),
        failed=sum(f for _, _, f in series),
    )
