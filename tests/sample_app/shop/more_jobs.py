"""More of the application's jobs, for liteq's own checks of the plugin (tests/check_more.py);
not part of the recipe in docs/testing.md."""

from __future__ import annotations

import asyncio

from shop.jobs import SENT, send_welcome, store


@store.task
def send_invoice(order_id: int) -> None:
    raise RuntimeError(f"no template for order {order_id}")


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
