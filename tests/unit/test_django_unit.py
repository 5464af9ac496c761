"""pgqueue.django's reading of a job's last_error into the framework's TaskError (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

from pgqueue.django import _parse_error


def test_an_error_written_by_run_task_keeps_its_class_path_start_and_worker() -> None:
    text = (
        "myapp.tasks.PaymentDeclined: card refused\n"
        "django task attempt 2 started 2025-01-02T03:04:05+00:00 on host:123\n"
        "\n"
        "Traceback (most recent call last):\n  ...\nmyapp.tasks.PaymentDeclined: card refused\n"
    )
    error, started, worker = _parse_error(text)
    assert error.exception_class_path == "myapp.tasks.PaymentDeclined"
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert started == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert worker == "host:123"


def test_pgqueue_own_errors_map_to_builtin_exceptions() -> None:
    for text, path in (
        ("JobTimeout: timed out after 5 s (attempt 1 of 1)", "builtins.TimeoutError"),
        ("LeaseExpired: the lease ran out at ...", "builtins.TimeoutError"),
        ("RuntimeError: the handler committed ...", "builtins.RuntimeError"),
        ("WorkerCrashed: the worker running this job died", "builtins.RuntimeError"),
        ("no colon at all", "builtins.RuntimeError"),
    ):
        error, started, worker = _parse_error(text)
        assert error.exception_class_path == path
        assert error.exception_class.__module__ == "builtins"
        assert error.traceback == text
        assert started is None
        assert worker is None
