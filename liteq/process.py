"""Worker identity and liveness: which process owns a job, and whether it still exists."""

from __future__ import annotations

import os
import secrets
import socket
import time

import psutil


def host() -> str:
    return socket.gethostname()


def make_owner() -> str:
    """A worker identity `host/pid/process-start-time/token`, unique even if the pid is reused."""
    pid = os.getpid()
    start = psutil.Process(pid).create_time()
    return f"{host()}/{pid}/{start:.2f}/{secrets.token_hex(4)}"


def parse_owner(owner: str) -> tuple[str, int, float] | None:
    """(host, pid, process start time) of an owner made by make_owner, or None."""
    try:
        owner_host, pid_s, start_s, _ = owner.split("/")
        return owner_host, int(pid_s), float(start_s)
    except ValueError:
        return None


def owner_process_state(owner: str) -> str:
    """'alive', 'dead' (its process is gone from this host) or 'remote' (another host)."""
    parsed = parse_owner(owner)
    if parsed is None or parsed[0] != host():
        return "remote"
    _, pid, start = parsed
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - start) > 0.5 or proc.status() == psutil.STATUS_ZOMBIE:
            return "dead"
    except psutil.NoSuchProcess:
        return "dead"
    return "alive"


def kill(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL a process and wait until it is dead — without reaping it.

    Never waitpid() here: the caller may be the process's parent (the supervisor), whose
    own waitpid() must still see the child die so that it starts a replacement.
    """
    try:
        proc = psutil.Process(pid)
        proc.kill()
    except psutil.NoSuchProcess:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)
