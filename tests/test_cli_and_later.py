"""The command line, the demo, and do_later, each run as a user would: in a real process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import liteq
from liteq.cli import main
from tests.jobs import Noop

ROOT = Path(__file__).parents[1]


def run(args: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload, no-any-return]


def test_liteq_demo(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "liteq", "demo"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "coalesced into job" in out and "same job" in out
    assert "13/13 jobs finished" in out
    assert out.count("completed") >= 12 and "card declined" in out
    assert "charge order 1042" in out and "3/3" in out
    assert (tmp_path / "liteq-demo.sqlite").exists()
    again = run([sys.executable, "-m", "liteq", "demo"], tmp_path)  # replaces its file
    assert again.returncode == 0 and "Enqueued 13 jobs" in again.stdout


def test_liteq_jobs_lists_a_queue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = liteq.SQLiteStore(tmp_path / "q.sqlite")
    store.enqueue(Noop(7), queue="mail")
    assert main(["jobs", "--db", f"sqlite:///{tmp_path}/q.sqlite", "--import", "tests.jobs"]) == 0
    out = capsys.readouterr().out
    assert "Noop" in out and "mail" in out and "queued" in out


def test_cli_errors_are_clear(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LITEQ_URL", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["jobs"])
    assert exit_info.value.code == 2
    assert "give --db URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_every_command_has_help_and_is_in_the_readme() -> None:
    from liteq.cli import _parser

    readme = (ROOT / "README.md").read_text()
    parser = _parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, sub in subparsers.choices.items():  # type: ignore[union-attr]
        assert sub.format_help(), name
        assert f"liteq {name}" in readme, f"`liteq {name}` is not documented in README.md"


def test_do_later_runs_after_the_script_in_order(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent("""
        import os, liteq
        from tests.jobs import Record

        class Shout(liteq.Job):
            def __init__(self, word):
                self.word = word
            def run(self, job):
                print("job", self.word, job.status.value, flush=True)

        def boom():
            raise RuntimeError("deferred failure")

        liteq.do_later(print, "first", flush=True)
        liteq.do_later(boom)
        liteq.do_later(Shout("second"))
        liteq.do_later(lambda: print("third", flush=True))
        pid = os.fork()
        if pid == 0:
            raise SystemExit(0)   # a forked child exits normally: must not run the parent's work
        os.waitpid(pid, 0)
        print("script done", flush=True)
    """)
    )
    result = run([sys.executable, str(script)], ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["script done", "first", "job second running", "third"]
    assert "deferred failure" in result.stderr


def test_do_later_rejects_what_it_cannot_run() -> None:
    with pytest.raises(TypeError, match="callable or a Job"):
        liteq.do_later(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no further arguments"):
        liteq.do_later(Noop(), 1)
