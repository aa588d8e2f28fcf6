"""What a worker's exit status means: Worker.start() returns it, `liteq work` exits with it."""

from __future__ import annotations

import os
import signal
from typing import Final

#: Stopped or drained (or max-jobs / max-time reached).
EXIT_OK: Final = 0
#: Less memory available than guarantee_memory, or more used than max_rss, before a job.
EXIT_MEMORY: Final = 1
#: The source file of an imported module changed: restart for the new code.
EXIT_CODE_CHANGED: Final = 2
#: A signal asked it to stop.
EXIT_SIGNAL: Final = 3
#: The queue file was deleted or replaced under it: no restart can mend that.
EXIT_STORE_MOVED: Final = 4
#: The queue file is damaged: no restart can mend that either.
EXIT_STORE_CORRUPT: Final = 5
#: It could not start (a bad --import, a store that cannot be opened).
EXIT_STARTUP_FAILED: Final = 70
#: It crashed (an exception escaped the worker itself).
EXIT_CRASHED: Final = 71

#: Exits that no restart can mend: `liteq work` stops with the same status.
FATAL: Final = frozenset({EXIT_STORE_MOVED, EXIT_STORE_CORRUPT})
#: Exits a worker chose, as opposed to a crash.
PLANNED: Final = frozenset(
    {EXIT_OK, EXIT_MEMORY, EXIT_CODE_CHANGED, EXIT_SIGNAL, EXIT_STORE_MOVED, EXIT_STORE_CORRUPT}
)

_REASONS: Final = {
    EXIT_OK: "finished (max-jobs, max-time or drained)",
    EXIT_MEMORY: "memory limit",
    EXIT_CODE_CHANGED: "code changed",
    EXIT_SIGNAL: "signalled",
    EXIT_STORE_MOVED: "the queue file was deleted or replaced",
    EXIT_STORE_CORRUPT: "the queue file is damaged",
    EXIT_STARTUP_FAILED: "could not start",
}


def reason(code: int) -> str:
    """What an exit code means, in words."""
    return _REASONS.get(code, "crashed")


def describe_exit(status: int) -> str:
    """A waitpid status in words: 'exit 2 (code changed)', 'killed by SIGKILL'."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    code = os.waitstatus_to_exitcode(status)
    return f"exit {code} ({reason(code)})"
