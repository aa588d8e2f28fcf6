"""Worker identity and liveness: which process owns a job, and whether it still exists.

A process is named by its pid and its start time as the kernel counts it (clock ticks since
boot, `/proc/<pid>/stat`), which no wall-clock step can move: a pid reused by a later
process has a later start, and a step of the clock changes neither number.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import socket
import time
from typing import Final, Literal, NamedTuple

import psutil


def host() -> str:
    """This host's name as owners record it: LITEQ_HOST if set (for hosts whose names are
    not unique, such as containers), else the host name."""
    return os.environ.get("LITEQ_HOST") or socket.gethostname()


def _linux_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # a zombie has finished: it runs nothing
        return None
    return fields[19].decode()  # field 22: start time in clock ticks since boot


def _psutil_start(pid: int) -> str | None:
    # Elsewhere (macOS) psutil reads the start time the kernel recorded at fork, once.
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"{proc.create_time():.3f}"
    except psutil.NoSuchProcess:
        return None


_PROC: Final = os.path.exists("/proc/self/stat")


def process_start(pid: int) -> str | None:
    """The start of process `pid` as a token no clock step changes; None if it is gone."""
    return _linux_start(pid) if _PROC else _psutil_start(pid)


class Owner(NamedTuple):
    """The parts of an owner string."""

    host: str
    pid: int
    start: str


def make_owner() -> str:
    """This process's worker identity, `host/pid/start/token`, unique even if the pid is reused."""
    pid = os.getpid()
    return f"{host()}/{pid}/{process_start(pid)}/{secrets.token_hex(4)}"


def parse_owner(owner: str) -> Owner | None:
    """The host, pid and start of an owner made by make_owner, or None."""
    parts = owner.rsplit("/", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return Owner(parts[0], int(parts[1]), parts[2])


def owner_state(owner: str | None) -> Literal["alive", "dead", "remote"]:
    """'alive' or 'dead' (a process of this host), or 'remote' (another host, or an owner
    that names no process: only its lease tells)."""
    parsed = None if owner is None else parse_owner(owner)
    if parsed is None or parsed.host != host():
        return "remote"
    return "alive" if process_start(parsed.pid) == parsed.start else "dead"


def kill(owner: Owner, timeout: float = 5.0) -> bool:
    """SIGKILL the process `owner` names and wait until it is dead — without reaping it.

    Returns False if that process was already gone (its pid may now be another's, which is
    left alone). Never waitpid() here: the caller may be the process's parent (the
    supervisor), whose own waitpid() must still see the child die to start a replacement.
    """
    if _PROC and hasattr(os, "pidfd_open"):
        try:  # a pidfd names one process: once its start is checked, no reuse can redirect it
            pidfd = os.pidfd_open(owner.pid)
        except ProcessLookupError:
            return False
        try:
            if process_start(owner.pid) != owner.start:
                return False
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], timeout)  # readable once the process has ended
        finally:
            os.close(pidfd)
        return True
    try:
        proc = psutil.Process(owner.pid)
        if _psutil_start(owner.pid) != owner.start:
            return False
        proc.kill()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.01)
    except psutil.NoSuchProcess:
        pass
    return True
