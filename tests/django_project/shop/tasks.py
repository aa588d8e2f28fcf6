"""The site's tasks: each records its run, so that the test can count them."""

import asyncio

from django.tasks import TaskContext, task
from shop.models import Order, Run


@task
def receipt(order_id: int) -> dict[str, object]:
    order = Order.objects.get(pk=order_id)
    Run.objects.create(label=f"receipt {order.item}")
    return {"order": order_id, "item": order.item}


@task
def refuse(reason: str) -> None:
    Run.objects.create(label=f"refuse {reason}")
    raise Refused(reason)


class Refused(Exception):
    pass


@task
def note(label: str) -> str:
    Run.objects.create(label=label)
    return label


@task(queue_name="mail")
async def mail(to: str) -> str:
    await asyncio.sleep(0.01)
    await Run.objects.acreate(label=f"mail {to}")
    return f"sent to {to}"


@task(takes_context=True)
def attempt(context: TaskContext) -> int:
    Run.objects.create(label=f"attempt {context.attempt}")
    return int(context.attempt)
