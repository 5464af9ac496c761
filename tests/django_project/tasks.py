"""The project's tasks, declared with the framework's own decorator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.db import connection

try:
    from django.tasks import task  # Django >= 6
except ImportError:
    from django_tasks import task  # the backport


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def explode(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def describe(context: Any, label: str, *, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": label,
        "extra": extra,
        "id": context.task_result.id,
        "attempt": context.attempt,
        "status": str(context.task_result.status),
    }


@task(priority=50, queue_name="emails")
def note(text: str) -> str:
    # Django's own connection in the worker (not the job's transaction): autocommit.
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO django_notes (text) VALUES (%s)", [text])
    return text.upper()


@task
async def double(x: int) -> int:
    return 2 * x


@task
def unserialisable() -> object:
    return object()


@task
def wait_for(path: str) -> str:
    deadline = time.monotonic() + 60
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)
    return "released"
