"""WorkerOptions is the one place a worker's options are written out: Worker's signature,
`liteq work`'s flags and the docs are held to it here."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import subprocess
import sys

import pytest

import liteq
from liteq.cli import build_parser
from liteq.cli.work import NO_FLAG, worker_options
from liteq.worker import Worker, WorkerOptions
from tests.helpers import ROOT

FIELDS = [field.name for field in dataclasses.fields(WorkerOptions)]


def work_flags() -> dict[str, str]:
    """`liteq work`'s flags, by dest."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    work = commands.choices["work"]
    return {action.dest: max(action.option_strings, key=len) for action in work._actions}


def test_every_worker_option_has_a_work_flag_or_a_reason_for_none() -> None:
    flags = work_flags()
    for name in FIELDS:
        if name in NO_FLAG:
            assert name not in flags, f"{name} has a flag ({flags[name]}) yet is in NO_FLAG"
            assert len(NO_FLAG[name]) > 20, f"say why {name} has no flag"
        else:
            assert name in flags, f"WorkerOptions.{name}: no flag of liteq work sets it"
    assert set(NO_FLAG) <= set(FIELDS), "NO_FLAG names an option WorkerOptions has not"


def test_work_without_flags_gives_workers_the_defaults_of_worker_options() -> None:
    args = build_parser().parse_args(["work", "--import", "jobs"])
    assert worker_options(args) == WorkerOptions()


def test_work_flags_reach_worker_options() -> None:
    argv = ["work", "--import", "jobs", "--queue", "a", "--queue", "b", "--max-jobs", "7"]
    argv += ["--max-time", "9", "--graceful-timeout", "2", "--wakeup-every", "0.5"]
    argv += ["--guarantee-memory", "1M", "--max-rss", "2M", "--max-crashes", "4"]
    argv += ["--lease", "12", "--prefetch", "3", "--nice", "1", "--no-jitter", "--burst"]
    argv += ["--concurrency", "5"]
    options = worker_options(build_parser().parse_args(argv))
    assert options == WorkerOptions(
        queues=("a", "b"),
        exit_after_n_jobs=7,
        max_time=9.0,
        graceful_shutdown_timeout=2.0,
        wakeup_every=0.5,
        guarantee_memory=1 << 20,
        max_rss=2 << 20,
        max_crashes=4,
        lease=12.0,
        prefetch=3,
        concurrency=5,
        nice=1,
        jitter=False,
        exit_if_no_jobs=True,
    )


def test_worker_takes_the_options_of_worker_options_in_their_order() -> None:
    parameters = list(inspect.signature(Worker).parameters.values())
    assert parameters[0].name == "store"
    options = inspect.signature(WorkerOptions).parameters.values()
    assert [(p.name, p.default) for p in parameters[1:]] == [(p.name, p.default) for p in options]
    store = liteq.MemoryStore()
    by_position = Worker(store, ["mail"], 0.5, True)
    assert by_position.options == WorkerOptions(
        queues=("mail",), wakeup_every=0.5, exit_if_no_jobs=True
    )
    assert Worker.with_options(store, by_position.options).options == by_position.options
    with pytest.raises(ValueError, match="prefetch"):
        Worker(store, prefetch=0)
    with pytest.raises(TypeError):
        Worker(store, quues=["mail"])  # type: ignore[call-arg]


def test_every_worker_option_is_documented() -> None:
    doc = WorkerOptions.__doc__ or ""
    deploying = (ROOT / "docs" / "deploying.md").read_text()
    found = re.search(r"`liteq\.Worker\(store, (.*?)\)`", deploying, re.DOTALL)
    assert found is not None, "docs/deploying.md shows Worker's signature"
    documented = [part.split("=")[0].strip() for part in found.group(1).split(",")]
    assert documented == FIELDS, "docs/deploying.md: The Worker"
    for name in FIELDS:
        assert re.search(rf"\b{name}\b", doc), f"WorkerOptions' docstring: {name}"


@pytest.mark.parametrize("flag", ["--prefetch", "--concurrency"])
@pytest.mark.parametrize("value", ["0", "-1", "abc", "10001", "99999999999999999999"])
def test_a_claim_size_past_its_bound_is_refused_by_the_parser(flag: str, value: str) -> None:
    # (A value past 2**63 once reached SQLite's LIMIT, and every worker crashed in a loop.)
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["work", "--import", "jobs", flag, value])
    assert refused.value.code == 2


def test_a_claim_size_past_its_bound_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "liteq", "work", "--import", "jobs", "--concurrency", "10001"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "expected a whole number from 1 to 10000" in result.stderr


def test_prefetch_auto_leaves_the_claims_to_the_worker_and_says_so_when_mistyped() -> None:
    assert build_parser().parse_args(["work", "--import", "jobs"]).prefetch is None  # (auto)
    assert build_parser().parse_args(["work", "--prefetch", "auto"]).prefetch is None
    assert build_parser().parse_args(["work", "--prefetch", "1"]).prefetch == 1
    result = subprocess.run(
        [sys.executable, "-m", "liteq", "work", "--import", "jobs", "--prefetch", "atuo"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "expected auto or a whole number from 1 to 10000, not 'atuo'" in result.stderr


def test_worker_refuses_a_claim_size_past_its_bound() -> None:
    store = liteq.MemoryStore()
    for option in ("prefetch", "concurrency"):
        with pytest.raises(ValueError, match=rf"{option} must be an int from 1 to 10000"):
            Worker(store, **{option: 10_001})
        assert getattr(Worker(store, **{option: 10_000}).options, option) == 10_000
