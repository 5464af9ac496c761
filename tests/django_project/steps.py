"""``python -m django_project.steps enqueue|results IDS_JSON|...``: one side of the Django test.

``enqueue`` enqueues through a request (django.test.Client, ATOMIC_REQUESTS) and in
``transaction.atomic()`` blocks, and prints the result ids as JSON; ``results`` reads them
back through the framework's result API and prints what it found as JSON.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Any

import django

django.setup()

from django.db import transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from . import tasks  # noqa: E402

try:
    from django.tasks import TaskResultStatus, default_task_backend
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    from django_tasks import TaskResultStatus, default_task_backend
    from django_tasks.exceptions import TaskResultDoesNotExist


class Rollback(Exception):
    pass


def enqueue() -> dict[str, Any]:
    ids: dict[str, Any] = {"framework": TaskResultStatus.__module__}
    client = Client(raise_request_exception=False)
    response = client.get("/enqueue/")
    assert response.status_code == 200, response.content
    ids["view"] = response.json()["id"]
    assert response.json()["status"] == "READY"
    failed_view = client.get("/enqueue-then-fail/")
    ids["failed_view_status"] = failed_view.status_code

    try:
        with transaction.atomic():
            ids["rolled_back"] = tasks.add.enqueue(1, 1).id
            raise Rollback
    except Rollback:
        pass
    with transaction.atomic():
        committed = tasks.add.enqueue(40, 2)
        with transaction.atomic():  # a savepoint that rolls back: only its job is gone
            tasks.add.enqueue(7, 7)
            transaction.set_rollback(True)
    ids["committed"] = committed.id
    # Read back before any worker ran it: READY, no return value yet.
    fresh = tasks.add.get_result(committed.id)
    ids["ready_status"] = str(fresh.status)
    ids["ready_enqueued_at"] = fresh.enqueued_at is not None

    ids["explode"] = tasks.explode.enqueue("boom").id
    ids["describe"] = tasks.describe.enqueue("ctx", extra={"k": [1, 2]}).id
    ids["note"] = tasks.note.enqueue("hello").id
    ids["urgent"] = tasks.add.using(priority=100).enqueue(0, 0).id
    ids["later"] = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 2).id
    ids["double"] = tasks.double.enqueue(21).id
    ids["unserialisable"] = tasks.unserialisable.enqueue().id
    try:
        tasks.add.enqueue(object(), 1)
    except TypeError as exc:
        ids["bad_args"] = f"TypeError: {exc}"
    return ids


def results(ids: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, task in (
        ("view", tasks.add),
        ("committed", tasks.add),
        ("explode", tasks.explode),
        ("describe", tasks.describe),
        ("note", tasks.note),
        ("urgent", tasks.add),
        ("later", tasks.add),
        ("double", tasks.double),
        ("unserialisable", tasks.unserialisable),
        ("wait_for", tasks.wait_for),
    ):
        if key not in ids:
            continue
        result = task.get_result(ids[key])
        entry: dict[str, Any] = {
            "status": str(result.status),
            "args": result.args,
            "kwargs": result.kwargs,
            "attempts": result.attempts,
            "is_finished": result.is_finished,
            "priority": result.task.priority,
            "queue_name": result.task.queue_name,
            "enqueued_at": result.enqueued_at is not None,
            "started_at": None if result.started_at is None else result.started_at.isoformat(),
            "finished_at": None if result.finished_at is None else result.finished_at.isoformat(),
            "errors": [
                {
                    "path": error.exception_class_path,
                    "class": error.exception_class.__name__,
                    "traceback": error.traceback,
                }
                for error in result.errors
            ],
        }
        if result.status == TaskResultStatus.SUCCESSFUL:
            entry["return_value"] = result.return_value
        out[key] = entry
    if "committed" not in ids:
        return out
    # refresh() re-reads through the backend.
    stale = default_task_backend.get_result(ids["committed"])
    stale.refresh()
    out["refreshed_status"] = str(stale.status)
    for missing in ("999999999", "not-a-number"):
        try:
            default_task_backend.get_result(missing)
        except TaskResultDoesNotExist:
            out.setdefault("missing", []).append(missing)
    try:
        tasks.explode.get_result(ids["committed"])
    except Exception as exc:
        out["mismatch"] = type(exc).__name__
    return out


def explode_once() -> dict[str, Any]:
    return {"explode": tasks.explode.enqueue("first try").id}


if __name__ == "__main__":
    if sys.argv[1] == "enqueue":
        print(json.dumps(enqueue()))
    elif sys.argv[1] == "wait":
        print(json.dumps({"wait_for": tasks.wait_for.enqueue(sys.argv[2]).id}))
    elif sys.argv[1] == "unmigrated":
        try:
            tasks.explode.enqueue("never stored")
        except Exception as exc:
            print(json.dumps({"enqueue": f"{type(exc).__name__}: {exc}"}))
    elif sys.argv[1] == "explode":
        print(json.dumps(explode_once()))
    else:
        print(json.dumps(results(json.loads(sys.argv[2]))))
