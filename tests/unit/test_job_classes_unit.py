"""Job classes, the task decorator and Gadget's option parsing, without a database.

Ports RedwoodJob's option tests (seed-semantics section 4) and pins the
hook order pgqueue defines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from pgqueue import (
    ConfigurationError,
    ConnectError,
    InvalidJobError,
    Job,
    JobNotConfiguredError,
    JobRecord,
    JobStatus,
    Task,
    job_handlers,
    task,
)
from pgqueue.errors import PgQueueError
from pgqueue.gadget import _gadget_queue, _start_at, enqueue
from pgqueue.retry import REDWOOD_MAX_ATTEMPTS, REDWOOD_RETRY

#: A DSN nothing listens on: reaching it would raise ConnectError.
NOWHERE = "host=/nonexistent-pgqueue-socket-dir port=1 dbname=nothing connect_timeout=1"


class SampleJob(Job):
    def perform(self, *args: Any) -> Any:
        return args


class EmailJob(SampleJob):
    queue = "email"
    priority = 3


class NamedJob(Job):
    name = "send-welcome-email"

    def perform(self, user_id: int) -> int:
        return user_id


class ChildOfNamed(NamedJob):
    pass


class Recorder(Job):
    """Records hook calls; fails where told to."""

    fail_in: str | None = None

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def _hook(self, hook: str, *rest: Any) -> None:
        self.calls.append((hook, *rest))
        if self.fail_in == hook:
            raise RuntimeError(f"boom in {hook}")

    def before_perform(self, *args: Any) -> None:
        self._hook("before_perform", *args)

    def perform(self, *args: Any) -> Any:
        self._hook("perform", *args)
        return "done"

    def after_success(self, result: Any, *args: Any) -> None:
        self._hook("after_success", result, *args)

    def after_failure(self, error: Exception, *args: Any) -> None:
        self._hook("after_failure", str(error), *args)

    def after_perform(self, *args: Any) -> None:
        self._hook("after_perform", *args)


@pytest.fixture(autouse=True)
def no_global_target(monkeypatch):
    """Each test starts with no Job.config(sql=...) and gets its settings undone."""
    monkeypatch.setattr(Job, "sql", None)
    for cls in (SampleJob, EmailJob):
        if "sql" in vars(cls):
            monkeypatch.delattr(cls, "sql")


# -- options (RedwoodJob's tests) -------------------------------------------------


def test_defaults_are_redwoods():
    job = SampleJob()
    assert (job.queue, job.priority, job.max_attempts) == ("default", 50, REDWOOD_MAX_ATTEMPTS)
    assert dict(job.retry or {}) == REDWOOD_RETRY
    assert {"backoff": "polynomial", "delay": 1, "factor": 4, "jitter": 0}.items() <= (
        REDWOOD_RETRY.items()
    )
    assert job.scheduled_at is None
    assert job.sql is None
    assert job.conn is None
    assert job.job is None


def test_set_overrides_and_keeps_the_rest_on_a_copy():
    job = SampleJob()
    other = job.set(queue="email", priority=10, max_attempts=3, retry={"backoff": "fixed"})
    assert other is not job
    assert type(other) is SampleJob
    assert (other.queue, other.priority, other.max_attempts) == ("email", 10, 3)
    assert other.retry == {"backoff": "fixed"}
    # Neither the instance nor the class moved.
    assert (job.queue, job.priority, job.max_attempts) == ("default", 50, 24)
    assert (SampleJob.queue, SampleJob.priority) == ("default", 50)
    # set() on a copy keeps the copy's earlier options.
    third = other.set(priority=1)
    assert (third.queue, third.priority, other.priority) == ("email", 1, 10)


def test_set_works_on_the_class_too():
    job = EmailJob.set(priority=7)
    assert isinstance(job, EmailJob)
    assert (job.queue, job.priority) == ("email", 7)
    assert EmailJob.priority == 3


def test_falsy_options_are_kept_unlike_redwood():
    # Redwood's getters use ||, so priority 0 fell back to 50.
    assert SampleJob().set(priority=0).priority == 0
    assert SampleJob().set(wait=0).scheduled_at == timedelta(0)


def test_an_empty_queue_is_refused_at_enqueue():
    with pytest.raises(InvalidJobError, match="queue must not be empty"):
        SampleJob().set(queue="", sql=NOWHERE).perform_later()


def test_subclass_attributes_do_not_leak_to_the_base():
    assert (EmailJob.queue, EmailJob.priority) == ("email", 3)
    assert (SampleJob.queue, SampleJob.priority) == ("default", 50)
    assert (Job.queue, Job.priority) == ("default", 50)


def test_wait_is_a_delay_from_the_database_clock():
    assert SampleJob().set(wait=300).scheduled_at == timedelta(minutes=5)
    assert SampleJob().set(wait=1.5).scheduled_at == timedelta(seconds=1.5)
    assert SampleJob().set(wait=timedelta(hours=2)).scheduled_at == timedelta(hours=2)


def test_wait_until_is_kept_as_given():
    at = datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert SampleJob().set(wait_until=at).scheduled_at is at


def test_wait_wins_over_wait_until_and_the_last_set_wins():
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert SampleJob().set(wait=60, wait_until=at).scheduled_at == timedelta(seconds=60)
    assert SampleJob().set(wait=60).set(wait_until=at).scheduled_at == at
    assert SampleJob().set(wait_until=at).set(wait=5).scheduled_at == timedelta(seconds=5)

    class Delayed(SampleJob):
        wait = 30

    assert Delayed().scheduled_at == timedelta(seconds=30)
    # A per-call wait_until beats the class's wait.
    assert Delayed().set(wait_until=at).scheduled_at == at


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait": -1}, "must not be negative"),
        ({"wait": "60"}, "seconds or a timedelta"),
        ({"wait": True}, "seconds or a timedelta"),
        ({"wait": float("nan")}, "seconds or a timedelta"),
        ({"wait": 1e300}, "out of range"),
        ({"wait_until": datetime(2030, 1, 1)}, "wait_until must be timezone-aware"),
        ({"wait_until": "2030-01-01T00:00:00Z"}, "wait_until must be a timezone-aware datetime"),
    ],
)
def test_bad_wait_options_are_refused_by_set(options, message):
    with pytest.raises(InvalidJobError, match=message):
        SampleJob().set(**options)


def test_bad_sql_targets_are_refused():
    with pytest.raises(ConfigurationError, match="DSN string"):
        SampleJob().set(sql=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="DSN string"):
        Job.config(sql=object())  # type: ignore[arg-type]


# -- names ----------------------------------------------------------------------


def test_the_job_name_is_module_and_qualname():
    assert SampleJob.name == f"{__name__}:SampleJob"
    assert EmailJob.name == f"{__name__}:EmailJob"

    class Local(Job):
        pass

    assert Local.name == f"{__name__}:test_the_job_name_is_module_and_qualname.<locals>.Local"


def test_an_explicit_name_is_kept_and_not_inherited():
    assert NamedJob.name == "send-welcome-email"
    assert ChildOfNamed.name == f"{__name__}:ChildOfNamed"


def test_the_base_class_cannot_be_enqueued_or_run():
    with pytest.raises(TypeError, match="does not implement perform"):
        Job().set(sql=NOWHERE).perform_later()
    with pytest.raises(TypeError, match="does not implement perform"):
        Job.perform_now()
    with pytest.raises(TypeError, match="does not implement perform"):
        job_handlers(Job)


# -- where jobs go --------------------------------------------------------------


def test_without_a_target_perform_later_says_how_to_configure():
    with pytest.raises(JobNotConfiguredError, match=r"Job\.config\(sql=") as info:
        SampleJob().perform_later(1)
    assert isinstance(info.value, ConfigurationError)
    assert isinstance(info.value, PgQueueError)
    with pytest.raises(JobNotConfiguredError):
        SampleJob.perform_later(1)


def test_config_on_the_base_applies_to_every_class_and_a_subclass_keeps_its_own():
    Job.config(sql="dbname=everything")
    assert SampleJob().sql == "dbname=everything"
    EmailJob.config(sql="dbname=email")
    assert EmailJob().sql == "dbname=email"
    assert SampleJob().sql == "dbname=everything"
    assert Job.sql == "dbname=everything"
    # A per-call target beats both.
    assert EmailJob().set(sql="dbname=call").sql == "dbname=call"
    EmailJob.config(sql=None)
    assert EmailJob().sql == "dbname=everything"
    Job.config(sql=None)
    assert SampleJob().sql is None


def test_unserialisable_arguments_fail_before_any_connection_is_tried():
    Job.config(sql=NOWHERE)
    for bad in (object(), {1: "int key"}, float("nan"), {"s": {1, 2}}, b"bytes"):
        with pytest.raises(InvalidJobError):
            SampleJob().perform_later("ok", bad)
    # The same call with good arguments does try to connect: the checks came first.
    with pytest.raises(ConnectError):
        SampleJob().perform_later("ok", [1, 2])


def test_bad_options_fail_before_any_connection_is_tried():
    job = SampleJob().set(sql=NOWHERE)
    with pytest.raises(InvalidJobError, match="priority"):
        job.set(priority="urgent").perform_later()
    with pytest.raises(InvalidJobError, match="max_attempts"):
        job.set(max_attempts=0).perform_later()
    with pytest.raises(InvalidJobError, match="retry"):
        job.set(retry={"backoff": "sideways"}).perform_later()


# -- perform_now and hooks ---------------------------------------------------------


def test_perform_now_returns_performs_value_on_instance_and_class():
    assert SampleJob().perform_now(1, "a") == (1, "a")
    assert SampleJob.perform_now(2) == (2,)
    assert NamedJob.perform_now(5) == 5


def test_hooks_run_in_order_on_success():
    job = Recorder()
    assert job.perform_now(1, 2) == "done"
    assert job.calls == [
        ("before_perform", 1, 2),
        ("perform", 1, 2),
        ("after_success", "done", 1, 2),
        ("after_perform", 1, 2),
    ]


def test_hooks_run_in_order_on_failure_and_the_error_is_unchanged():
    job = Recorder()
    job.fail_in = "perform"
    with pytest.raises(RuntimeError, match="boom in perform") as info:
        job.perform_now("x")
    assert type(info.value) is RuntimeError
    assert job.calls == [
        ("before_perform", "x"),
        ("perform", "x"),
        ("after_failure", "boom in perform", "x"),
        ("after_perform", "x"),
    ]


def test_a_failing_before_perform_skips_perform():
    job = Recorder()
    job.fail_in = "before_perform"
    with pytest.raises(RuntimeError, match="boom in before_perform"):
        job.perform_now()
    assert [call[0] for call in job.calls] == ["before_perform", "after_failure", "after_perform"]


def test_a_failing_after_success_fails_the_job_but_after_perform_still_runs():
    job = Recorder()
    job.fail_in = "after_success"
    with pytest.raises(RuntimeError, match="boom in after_success"):
        job.perform_now()
    assert [call[0] for call in job.calls] == [
        "before_perform",
        "perform",
        "after_success",
        "after_perform",
    ]


def test_a_failing_after_perform_is_not_swallowed():
    job = Recorder()
    job.fail_in = "after_perform"
    with pytest.raises(RuntimeError, match="boom in after_perform"):
        job.perform_now()


# -- the handler a worker runs ----------------------------------------------------------


def _record(data: Any, attempts: int = 1) -> JobRecord:
    now = datetime.now(UTC)
    return JobRecord(
        id=7,
        queue="default",
        name=Recorder.name,
        data=data,
        priority=50,
        status=JobStatus.RUNNING,
        scheduled_at=now,
        attempts=attempts,
        max_attempts=24,
        retry=None,
        last_error=None,
        result=None,
        created_at=now,
        updated_at=now,
        completed_at=None,
    )


def test_a_handler_sets_conn_and_job_before_the_hooks_and_unpacks_args():
    seen: list[Any] = []

    class Probe(Job):
        def before_perform(self, *args: Any) -> None:
            seen.append((self.conn, self.job))

        def perform(self, *args: Any) -> Any:
            seen.append(args)
            return "ok"

    handlers = job_handlers(Probe)
    assert list(handlers) == [Probe.name]
    conn = object()
    record = _record({"args": [1, {"a": 2}]})
    assert handlers[Probe.name](conn, record) == "ok"  # type: ignore[arg-type]
    assert seen == [(conn, record), (1, {"a": 2})]
    # Data that is not an {"args": [...]} envelope is the single argument.
    seen.clear()
    handlers[Probe.name](conn, _record({"args": [1], "other": 2}))  # type: ignore[arg-type]
    handlers[Probe.name](conn, _record({"x": 1}))  # type: ignore[arg-type]
    handlers[Probe.name](conn, _record([1, 2]))  # type: ignore[arg-type]
    assert seen[1::2] == [({"args": [1], "other": 2},), ({"x": 1},), ([1, 2],)]


def test_each_run_gets_a_fresh_instance():
    instances: list[Job] = []

    class Counted(Job):
        def perform(self) -> None:
            instances.append(self)

    handler = job_handlers(Counted)[Counted.name]
    handler(object(), _record({"args": []}))  # type: ignore[arg-type]
    handler(object(), _record({"args": []}))  # type: ignore[arg-type]
    assert len(instances) == 2
    assert instances[0] is not instances[1]


def test_job_handlers_refuses_bad_input():
    with pytest.raises(ConfigurationError, match="at least one"):
        job_handlers()
    with pytest.raises(ConfigurationError, match="Job subclasses and tasks"):
        job_handlers(len)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Job subclasses and tasks"):
        job_handlers(SampleJob())  # type: ignore[arg-type]

    class Twin(Job):
        name = NamedJob.name

        def perform(self) -> None:
            pass

    with pytest.raises(ConfigurationError, match="two job classes or tasks are named"):
        job_handlers(NamedJob, Twin)


# -- the decorator ------------------------------------------------------------------


@task
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@task(queue="email", priority="high", max_attempts=3, retry={"backoff": "fixed", "delay": 5})
def send(address: str) -> str:
    return f"sent to {address}"


@task(name="with-context")
def with_context(x: int, *, conn: Any = "unset", job: Any = "unset") -> tuple[Any, ...]:
    return (x, conn, job)


def test_a_bare_task_still_calls_the_function_and_has_job_defaults():
    assert isinstance(add, Task)
    assert add(2, 3) == 5
    assert add.__name__ == "add"
    assert add.__doc__ == "Add two numbers."
    assert add.name == f"{__name__}:add"
    assert (add.queue, add.priority, add.max_attempts) == ("default", 50, 24)
    assert dict(add.retry or {}) == REDWOOD_RETRY
    assert add.perform_now(4, 5) == 9
    assert issubclass(add.job_class, Job)
    assert add.job_class.name == add.name


def test_a_task_with_options():
    assert (send.queue, send.priority, send.max_attempts) == ("email", "high", 3)
    assert send.retry == {"backoff": "fixed", "delay": 5}
    assert send("a@b") == "sent to a@b"
    copy = send.set(queue="bulk", wait=10)
    assert isinstance(copy, Task)
    assert (copy.queue, copy.scheduled_at) == ("bulk", timedelta(seconds=10))
    assert (send.queue, send.scheduled_at) == ("email", None)
    assert copy("c@d") == "sent to c@d"


def test_a_task_gets_conn_and_job_when_it_asks_for_them():
    assert with_context.name == "with-context"
    # Called directly: the function's own defaults.
    assert with_context(1) == (1, "unset", "unset")
    # perform_now: no database, so None.
    assert with_context.perform_now(1) == (1, None, None)
    handler = job_handlers(with_context)["with-context"]
    conn, record = object(), _record({"args": [3]})
    assert handler(conn, record) == (3, conn, record)  # type: ignore[arg-type]


def test_tasks_and_classes_share_one_handler_mapping():
    handlers = job_handlers(SampleJob, add, send)
    assert set(handlers) == {SampleJob.name, add.name, send.name}
    assert handlers[add.name](object(), _record({"args": [1, 2]})) == 3  # type: ignore[arg-type]


def test_task_perform_later_needs_a_target_and_json_arguments():
    with pytest.raises(JobNotConfiguredError):
        add.perform_later(1, 2)
    with pytest.raises(InvalidJobError):
        add.set(sql=NOWHERE).perform_later(1, object())


def test_task_refuses_a_non_callable():
    with pytest.raises(TypeError, match="decorates a function"):
        task(queue="x")(42)  # type: ignore[arg-type]


# -- Gadget's options -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-04-03T12:00:00.000Z", datetime(2024, 4, 3, 12, tzinfo=UTC)),
        ("2024-04-03T14:00:00+02:00", datetime(2024, 4, 3, 12, tzinfo=UTC)),
        (
            datetime(2024, 4, 3, 7, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2024, 4, 3, 12, tzinfo=UTC),
        ),
    ],
)
def test_start_at_accepts_aware_datetimes_and_iso_strings(value, expected):
    assert _start_at(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-04-03T12:00:00", "no time zone"),
        ("2024-04-03", "no time zone"),
        (datetime(2024, 4, 3, 12), "no time zone"),
        ("next tuesday", "not an ISO-8601"),
        (1712145600, "datetime or an ISO-8601 string"),
    ],
)
def test_start_at_refuses_naive_and_unparseable_values(value, message):
    with pytest.raises(InvalidJobError, match=message):
        _start_at(value)


def test_gadget_queue_spellings():
    assert _gadget_queue("emails") == ("emails", 1)
    assert _gadget_queue({"name": "dedicated", "maxConcurrency": 4}) == ("dedicated", 4)
    assert _gadget_queue({"name": "dedicated", "max_concurrency": 2}) == ("dedicated", 2)
    assert _gadget_queue({"name": "open"}) == ("open", None)


@pytest.mark.parametrize(
    ("queue", "message"),
    [
        ({"maxConcurrency": 4}, "needs a name"),
        ({"name": "q", "max_concurrency": 0}, "between 1"),
        ({"name": "q", "maxConcurrency": 2, "max_concurrency": 2}, "not both"),
        ({"name": "q", "concurrency": 2}, "unknown queue key 'concurrency'"),
        ({"name": 5}, "must be a string"),
        (["q"], "must be a name or a mapping"),
    ],
)
def test_bad_gadget_queues_are_refused(queue, message):
    with pytest.raises(InvalidJobError, match=message):
        _gadget_queue(queue)


def test_enqueue_validates_before_connecting():
    checks: list[tuple[dict[str, Any], str]] = [
        ({"start_at": "2024-04-03T12:00:00"}, "no time zone"),
        ({"priority": "urgent"}, "unknown priority name"),
        ({"retries": -1}, "retry_count"),
        ({"retries": {"retryCount": 2, "tries": 3}}, "unknown retries key"),
        ({"queue": ""}, "queue must not be empty"),
    ]
    for options, message in checks:
        with pytest.raises(InvalidJobError, match=message):
            enqueue(add, {"a": 1}, sql=NOWHERE, **options)
    with pytest.raises(InvalidJobError, match="not JSON-serialisable"):
        enqueue("a-name", {"x": object()}, sql=NOWHERE)
    with pytest.raises(InvalidJobError, match="action must be"):
        enqueue(42, sql=NOWHERE)  # type: ignore[arg-type]
    with pytest.raises(JobNotConfiguredError):
        enqueue(add, {"a": 1})
    with pytest.raises(ConnectError):
        enqueue(add, {"a": 1}, sql=NOWHERE)


def test_unknown_enqueue_options_are_a_type_error():
    with pytest.raises(TypeError):
        enqueue(add, {}, startAt="2024-04-03T12:00:00Z")  # type: ignore[call-arg]
