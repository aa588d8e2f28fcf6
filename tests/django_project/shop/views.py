from django.db import transaction
from django.http import HttpRequest, JsonResponse
from shop.models import Order
from shop.tasks import receipt


def place_order(request: HttpRequest) -> JsonResponse:
    """Save an order and enqueue its receipt, in one transaction."""
    with transaction.atomic():
        order = Order.objects.create(item=request.GET.get("item", "book"))
        result = receipt.enqueue(order.pk)
    return JsonResponse({"order": order.pk, "task": result.id})
