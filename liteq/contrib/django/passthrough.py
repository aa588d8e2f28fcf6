"""`manage.py liteq_work` and `manage.py liteq`: liteq's own command line, run on the queue
of a LiteqBackend (its URL in LITEQ_URL, which every liteq command reads for `--db`).

The command replaces the manage.py process (exec): `liteq work`'s supervisor then is the
process that systemd or a terminal started, gets their signals, and never sets up Django
itself; each worker it forks does (`liteq.contrib.django.worker`), with no database
connection inherited across fork.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import NoReturn

from django.core.exceptions import ImproperlyConfigured
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend

from liteq.contrib.django.backend import LiteqBackend
from liteq.contrib.django.place import queue_env

#: The module each worker imports first: Django set up in it (see worker.py).
WORKER_SETUP = "liteq.contrib.django.worker"


def _split(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(the backend alias, the rest for liteq). Django's own options (--settings,
    --pythonpath) were applied by manage.py already: they are left out."""
    ours = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ours.add_argument("--backend", default="default")
    ours.add_argument("--settings")
    ours.add_argument("--pythonpath")
    known, rest = ours.parse_known_args(list(argv))
    return str(known.backend), rest


def liteq_command(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of liteq for `manage.py liteq ARGS` (`argv`:
    ARGS); ImproperlyConfigured if the backend is not liteq's, or cannot hold a queue."""
    alias, args = _split(argv)
    try:
        backend = task_backends[alias]
    except InvalidTaskBackend as exc:
        raise ImproperlyConfigured(f"no task backend {alias!r} in TASKS ({exc})") from exc
    if not isinstance(backend, LiteqBackend):
        raise ImproperlyConfigured(
            f"the task backend {alias!r} is {type(backend).__name__}, not liteq's LiteqBackend"
        )
    backend.check_place()
    if any(a == "--db" or a.startswith("--db=") for a in args):
        raise ImproperlyConfigured(
            f"no --db: the queue is the one of the task backend {alias!r} (--backend ALIAS)"
        )
    env = {**os.environ, **queue_env(backend.place)}
    # The project's own modules import in liteq's process as in manage.py's.
    here = sys.path[0] or os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    if args[:1] == ["work"]:
        return [sys.executable, "-m", "liteq", "work", "--import", WORKER_SETUP, *args[1:]], env
    # Any other command may import the project's tasks (enqueue, --import): Django first.
    return [sys.executable, "-c", _WITH_DJANGO, *args], env


#: What `manage.py liteq_work --help` says before liteq work's own help.
_WORK_HELP = (
    textwrap.fill(
        "manage.py liteq_work [--backend ALIAS] [OPTIONS]: liteq work on the queue of the task "
        "backend ALIAS ('default'), its workers with Django set up and the installed apps' "
        "tasks modules imported. OPTIONS are liteq work's, below, but for --db (the backend's "
        "queue is used); --import adds modules of your own.",
        width=79,
    )
    + "\n\n"
)

#: `python -c` for a liteq command other than work: Django set up, then liteq's main.
_WITH_DJANGO = (
    "import sys, django; django.setup(); from liteq.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run(argv: Sequence[str]) -> NoReturn:
    """Become liteq's command (`argv`: its arguments); on a mistake, one line and exit 2."""
    try:
        command, env = liteq_command(argv)
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"liteq: {exc}\n")
        sys.exit(2)
    if argv[:1] == ["work"] and {"-h", "--help"} & set(argv):
        sys.stdout.write(_WORK_HELP)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)  # noqa: S606 - this interpreter, liteq's own module
