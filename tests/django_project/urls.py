"""Two views: one enqueues and succeeds, one enqueues and then fails (ATOMIC_REQUESTS)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path

from .tasks import add


def enqueue(request: HttpRequest) -> JsonResponse:
    result = add.enqueue(2, 3)
    return JsonResponse({"id": result.id, "status": str(result.status)})


def enqueue_then_fail(request: HttpRequest) -> JsonResponse:
    add.enqueue(100, 200)
    raise RuntimeError("the view failed after enqueueing")


urlpatterns = [
    path("enqueue/", enqueue),
    path("enqueue-then-fail/", enqueue_then_fail),
]
