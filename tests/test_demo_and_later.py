"""The demo and do_later, each run as a user would: in a real process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import liteq
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
