"""Reading the trace files that test jobs write, and checking runs against the guarantees."""

from __future__ import annotations

import itertools
import json
from pathlib import Path


def runs_by_job(trace: Path) -> dict[int, list[dict[str, object]]]:
    """Each job's runs in start order: {"pid", "start", "end" (None if it never ended)}."""
    runs: dict[int, list[dict[str, object]]] = {}
    if not trace.exists():  # no job ran (every one was coalesced, say)
        return runs
    text = trace.read_text()
    if not text.endswith("\n"):  # a line being written as we read: not an event yet
        text = text[: text.rfind("\n") + 1]
    for line in text.splitlines():
        event = json.loads(line)
        job_runs = runs.setdefault(event["id"], [])
        if event["event"] == "start":
            job_runs.append(
                {"pid": event["pid"], "start": event["t"], "end": None, "attempt": event["attempt"]}
            )
        else:
            # The latest unfinished run of that pid (an interrupted run stays unfinished).
            run = [r for r in job_runs if r["pid"] == event["pid"] and r["end"] is None][-1]
            run["end"] = event["t"]
    for job_runs in runs.values():
        job_runs.sort(key=lambda r: r["start"])  # type: ignore[arg-type, return-value]
    return runs


def assert_runs_never_overlap(
    runs: dict[int, list[dict[str, object]]], killed: dict[int, float]
) -> None:
    """No two runs of a job overlap; a job ran again only after a kill ended its earlier run.

    A run in a killed worker may have finished its work before the kill and still be run
    again (the kill came before its completion was committed): at least once, never at once.
    """
    for job_id, job_runs in runs.items():
        *earlier, last = job_runs
        assert last["end"] is not None, f"job {job_id}'s last run never finished: {job_runs}"
        for run in earlier:
            assert run["pid"] in killed, f"job {job_id} ran again though pid {run['pid']} lived"
            if run["end"] is None:  # cut short by the kill
                run["end"] = killed[run["pid"]]  # type: ignore[index]
        for before, after in itertools.pairwise(job_runs):
            assert before["end"] <= after["start"], f"job {job_id} ran twice at once: {job_runs}"  # type: ignore[operator]
