from __future__ import annotations

import liteq

store = liteq.connect()  # LITEQ_URL: `liteq work` sets it; the tests' pytest.ini too

OUTBOX: list[str] = []


@store.task(queue="mail")
async def send_welcome(email: str) -> None:
    if "@" not in email:
        raise ValueError(f"not an address: {email!r}")
    OUTBOX.append(email)
