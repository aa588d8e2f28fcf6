"""The Python 3.12+ environment the Django tests run in (Django 6 needs 3.12; liteq's own
environment may be 3.11): `.venv-django` at the repository's root, built once with
`pip install -e '.[django,postgres]'` and reused while the dependencies it installs and
the interpreter stay the same. CI builds it before the tests:
`python3 tests/django_project/venv.py`.

An interpreter is looked for in turn: $LITEQ_DJANGO_PYTHON, python3.14/3.13/3.12 on PATH,
pyenv's versions, `uv python find`. Standard library only: any python3 runs this.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-django"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / "liteq-stamp"

_CHECK = "import sys, venv, ensurepip; print(sys.version_info >= (3, 12))"


def _works(candidate: str) -> bool:
    """Whether `candidate` runs, is Python 3.12 or newer, and can make a venv (a pyenv
    shim of a version not selected, say, does not run)."""
    try:
        out = subprocess.run(
            [candidate, "-c", _CHECK], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() == "True"


def _candidates() -> Iterator[str]:
    given = os.environ.get("LITEQ_DJANGO_PYTHON")
    if given:
        yield given
    for name in ("python3.14", "python3.13", "python3.12"):
        found = shutil.which(name)
        if found:
            yield found
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    versions = glob.glob(os.path.join(pyenv, "versions", "3.1[2-9]*", "bin", "python3"))
    yield from sorted(versions, key=_version_key, reverse=True)
    uv = shutil.which("uv")
    if uv:
        out = subprocess.run(
            [uv, "python", "find", ">=3.12"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            yield out.stdout.strip()


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parents[1].name  # versions/3.13.0/bin/python3
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def find_python() -> str | None:
    """A Python 3.12+ interpreter that can make a venv, or None."""
    return next((c for c in _candidates() if _works(c)), None)


def _stamp(python: str) -> str:
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True
    ).stdout
    # What the install depends on (not the tools' settings, which change more often):
    # the code itself is installed editable.
    with open(ROOT / "pyproject.toml", "rb") as file:
        project = tomllib.load(file)["project"]
    extras = project["optional-dependencies"]
    wanted = [project["dependencies"], extras["django"], extras["postgres"], version]
    return hashlib.sha256(json.dumps(wanted).encode()).hexdigest()


def ensure_venv() -> Path | None:
    """The venv's python, built if missing or out of date; None without an interpreter.
    A lock beside it lets concurrent test runs build it once."""
    python = find_python()
    if python is None:
        return None
    with open(ROOT / ".venv-django.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = _stamp(python)
        if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == stamp:
            return PYTHON
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(PYTHON), "-m", "pip", "install", "-q", "-e", f"{ROOT}[django,postgres]"],
            check=True,
        )
        STAMP.write_text(stamp)
    return PYTHON


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        built = ensure_venv()
        if built is None:
            sys.exit(
                "no Python 3.12+ found for the Django tests (see tests/django_project/venv.py)"
            )
        print(built)
