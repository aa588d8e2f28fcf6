"""Wake-ups by LISTEN/NOTIFY: a thread that rings a store's doorbell when jobs are queued
(and moves its mark when a job finishes, for results waited for).

The schema's triggers NOTIFY on the store's channel when a transaction that queues jobs
commits. Each process that waits for jobs keeps a connection of its own that LISTENs; a
notification rings the Waker, and an idle worker claims within milliseconds, with no
polling of the table. If that connection is lost, the thread connects again with backoff;
meanwhile a worker still looks every `wakeup_every` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import weakref
from typing import Any

import psycopg

from liteq.errors import StoreError
from liteq.stores.postgres.link import connect, where
from liteq.stores.wakeup import Waker

log = logging.getLogger("liteq.store")

#: Backoff between attempts to listen again after the connection was lost.
RETRY_FIRST, RETRY_MAX = 0.5, 30.0

_LISTENERS: weakref.WeakSet[Listener] = weakref.WeakSet()


def _before_fork() -> None:
    for listener in list(_LISTENERS):
        listener.stop()  # its thread would not exist in the child; it starts again on use


os.register_at_fork(before=_before_fork)


class Listener:
    """LISTENs on `channel` in a thread of its own, ringing `waker` on each notification."""

    def __init__(self, conninfo: str, channel: str, waker: Waker) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.waker = waker
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pipe: _Pipe | None = None
        _LISTENERS.add(self)

    def ensure_running(self) -> None:
        """Start the thread if it is not running (a new process, or after stop())."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        listening = threading.Event()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._pipe = pipe = _Pipe()
            self._thread = threading.Thread(
                target=self._run, args=(pipe, listening), name="liteq-listen", daemon=True
            )
            self._thread.start()
        # Until LISTEN is in place a notification could be missed: wait a little for it
        # (the thread rings once it listens, so that a job queued before is claimed).
        listening.wait(2.0)

    def running(self) -> bool:
        """Whether the thread runs (it listens, or connects again)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def stop(self) -> None:
        """Stop the thread (it closes its connection)."""
        with self._lock:
            thread, pipe = self._thread, self._pipe
            self._thread = self._pipe = None
        if thread is not None and pipe is not None:
            pipe.poke()
            thread.join(5.0)

    def _run(self, pipe: _Pipe, listening: threading.Event) -> None:
        try:
            self._serve(pipe, listening)
        finally:
            pipe.close()

    def _serve(self, pipe: _Pipe, listening: threading.Event) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                conn = connect(self.conninfo)
            except StoreError as exc:  # (refused too: the work connection may still pass)
                log.warning("cannot listen for new jobs (%s): trying again in %.1fs", exc, delay)
                if pipe.wait(delay):
                    return
                delay = min(delay * 2, RETRY_MAX)
                continue
            try:
                conn.execute(f'LISTEN "{self.channel}"')
                delay = RETRY_FIRST
                listening.set()
                self.waker.ring()  # a job queued before LISTEN took effect: look now
                if self._listen(conn, pipe):
                    return
            except psycopg.Error as exc:
                text = str(exc).strip()
                log.warning(
                    "lost the connection that listens for new jobs (%s): %s",
                    where(self.conninfo),
                    text.splitlines()[0] if text else type(exc).__name__,
                )
                if pipe.wait(delay):
                    return
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def _listen(self, conn: psycopg.Connection[Any], pipe: _Pipe) -> bool:
        """Ring on each notification until stopped (True) or the connection fails (raises)."""
        pgconn = conn.pgconn
        sock = pgconn.socket
        while True:
            ready, _, _ = select.select([sock, pipe.read_fd], [], [])
            if pipe.read_fd in ready:
                return True
            pgconn.consume_input()
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection was closed by the server")
            notified = False
            while (notice := pgconn.notifies()) is not None:
                if notice.extra == b"done":  # a job finished: for those waiting for results
                    self.waker.finished()
                else:
                    notified = True
            if notified:
                self.waker.ring()


class _Pipe:
    """How stop() reaches a thread blocked in select(); the thread closes it as it ends."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self._lock = threading.Lock()
        self._open = True

    def poke(self) -> None:
        with self._lock:
            if self._open:
                os.write(self._write_fd, b"x")

    def wait(self, seconds: float) -> bool:
        """Wait `seconds`; True at once if poked meanwhile."""
        ready, _, _ = select.select([self.read_fd], [], [], seconds)
        return bool(ready)

    def close(self) -> None:
        with self._lock:
            self._open = False
            os.close(self.read_fd)
            os.close(self._write_fd)
