"""The application's code that enqueues jobs."""

from __future__ import annotations

from shop.jobs import remind, send_welcome


def signup(email: str) -> None:
    send_welcome.enqueue(email)
    remind.enqueue_with((email,), delay=3600)  # an hour later
