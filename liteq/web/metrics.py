"""/metrics: the queue in Prometheus' text exposition format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from liteq.status import Status
from liteq.stores.contract import Finished


def _label(name: str, value: str) -> str:
    """A label of a sample, its value escaped as the text format says."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"'


def _queue(name: str) -> str:
    """The labels of a queue's sample."""
    return _label("queue", name)


def exposition(report: dict[str, Any], totals: Finished) -> str:
    """The text Prometheus scrapes, from admin.overview() and store.totals()."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:  # labels: `a="x",b="y"`, or "" for none
            # Counts whole (`:g` would round a counter past a million); seconds as repr.
            shown = str(value) if isinstance(value, int) else repr(float(value))
            lines.append(f"{name}{{{labels}}} {shown}" if labels else f"{name} {shown}")

    queues = report["queues"]
    family(
        "liteq_jobs",
        "gauge",
        "Jobs in the queue, by status.",
        [
            (f'{_queue(q["queue"])},status="{s.value}"', q["counts"].get(s.value, 0))
            for q in queues
            for s in Status
            if s is not Status.UNQUEUED
        ],
    )
    family(
        "liteq_jobs_due",
        "gauge",
        "Queued jobs whose time to run has come.",
        [(_queue(q["queue"]), q["due"]) for q in queues],
    )
    family(
        "liteq_oldest_due_job_age_seconds",
        "gauge",
        "How long the oldest due job has waited (0 when none is due).",
        [(_queue(q["queue"]), q["oldest_wait"] or 0.0) for q in queues],
    )
    family(
        "liteq_queue_paused",
        "gauge",
        "1 while the queue is paused.",
        [(_queue(q["queue"]), int(q["paused"])) for q in queues],
    )
    family(
        "liteq_jobs_completed_total",
        "counter",
        "Jobs completed.",
        [(_queue(name), done) for name, (done, _) in sorted(totals.items())],
    )
    family(
        "liteq_attempts_failed_total",
        "counter",
        "Attempts that failed (a job retried after a failure counts once per attempt).",
        [(_queue(name), failed) for name, (_, failed) in sorted(totals.items())],
    )
    workers = report["workers"]
    family("liteq_workers_alive", "gauge", "Live workers.", [("", len(workers))])
    family(
        "liteq_worker_jobs_in_flight",
        "gauge",
        "Jobs a live worker had in flight at its last beat.",
        [(_label("worker", f"{w['host']}/{w['pid']}"), w["in_flight"]) for w in workers],
    )
    _pools(family, report.get("pools", []))
    return "\n".join(lines) + "\n"


def _pools(
    family: Callable[[str, str, str, list[tuple[str, float]]], None], pools: list[Any]
) -> None:
    """The autoscaled pools of running `liteq work` supervisors, labelled by pool and
    supervisor (host/pid): processes now, limits, target wait, and when they last decided."""
    labels = [
        _label("pool", p["pool"]) + "," + _label("supervisor", f"{p['host']}/{p['pid']}")
        for p in pools
    ]
    for name, key, help_text in (
        ("liteq_pool_processes", "processes", "Worker processes of an autoscaled pool now."),
        ("liteq_pool_min_processes", "min", "An autoscaled pool's least worker processes."),
        ("liteq_pool_max_processes", "max", "An autoscaled pool's most worker processes."),
        (
            "liteq_pool_target_wait_seconds",
            "target_wait",
            "How long a pool's oldest due job may wait before it grows.",
        ),
    ):
        family(
            name, "gauge", help_text, [(lab, p[key]) for lab, p in zip(labels, pools, strict=True)]
        )
    family(
        "liteq_pool_last_decision_timestamp_seconds",
        "gauge",
        "When an autoscaled pool last changed its count (or was held back), epoch seconds.",
        [
            (lab, p["decided_at"])
            for lab, p in zip(labels, pools, strict=True)
            if p["decided_at"] is not None
        ],
    )
