"""The application's jobs, on the queue LITEQ_URL names (as `liteq work` sets it)."""

from __future__ import annotations

import asyncio

import liteq

store = liteq.connect()

#: What the jobs did, for the checks to read (a real app would send mail).
SENT: list[str] = []


@store.task(queue="mail")
def send_welcome(email: str) -> None:
    SENT.append(f"welcome {email}")


@store.task
def send_invoice(order_id: int) -> None:
    raise RuntimeError(f"no template for order {order_id}")


@store.task
def remind(email: str) -> None:
    SENT.append(f"reminder {email}")


#: How many times flaky_export fails before it succeeds.
FAILURES = {"left": 0}


@store.task(max_attempts=3)
def flaky_export(name: str) -> None:
    if FAILURES["left"] > 0:
        FAILURES["left"] -= 1
        raise ConnectionError("the export server hung up")
    SENT.append(f"exported {name}")


@store.task
def close_month(emails: list[str]) -> None:
    for email in emails:
        send_welcome.enqueue(email)


@store.task
def poll_forever(n: int) -> None:
    poll_forever.enqueue(n + 1)


@store.task
async def notify(user_id: int) -> None:
    await asyncio.sleep(0.01)
    SENT.append(f"notified {user_id}")
