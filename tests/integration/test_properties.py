"""Property-based tests (hypothesis) of the enqueue APIs against a real database.

Every call either succeeds and round-trips exactly through get_job, or raises a pgqueue error
and leaves the table exactly as it was; and a worker that later runs everything that was
enqueued completes every job, reading each payload intact.

One rule of jsonb is built into the expectations (see :func:`expected_json`): numbers are
stored as Postgres numerics, so a float whose shortest repr has an exponent and a whole value
(every float of magnitude 1e16 or more, such as ``1e16`` or ``1.7976931348623157e308``) comes
back as the int that repr spells (``10**16``), and ``-0.0`` comes back as ``0.0``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pgqueue
from pgqueue import InvalidJobError, JobStatus, PgQueueError
from pgqueue._input import MAX_DATA_DEPTH, MAX_NAME_BYTES, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_ENV
from pgqueue.priority import PRIORITY_NAMES, to_priority
from pgqueue.schedule import INTERVAL_KEYS, normalize_interval

# Deterministic in CI; one connection per test, examples share its database.
DB = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# -- strategies ---------------------------------------------------------------------------

HOSTILE_CHARS = st.one_of(
    st.characters(),
    st.sampled_from(["\x00", "\ud800", "'", '"', ";", "-", "\\", "\n", "😀", "\u2028"]),
)
hostile_text = st.one_of(
    st.text(HOSTILE_CHARS, max_size=20),
    st.sampled_from(["", "'; DROP TABLE pgqueue.jobs; --", "\\u0000", "\\\\u0000", "a\x00b"]),
)
long_text = st.builds(
    lambda char, count: char * count,
    st.sampled_from(["a", "é", "€", "😀"]),
    st.integers(MAX_NAME_BYTES // 4 - 2, MAX_NAME_BYTES + 2),
)
# Mapped so that one_of() below treats it as one branch, not five (it flattens nested one_of).
garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
).map(lambda value: value)
names = st.one_of(hostile_text, long_text, st.sampled_from(["pgqueue.recurring", "x"]), garbage)
priorities = st.one_of(
    st.integers(-(2**31) - 1, -(2**31) + 1),
    st.integers(2**31 - 2, 2**31),
    st.integers(-100, 100),
    st.sampled_from([*PRIORITY_NAMES, "HIGH", " low ", "urgent", ""]),
    garbage,
)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**80), 2**80),
    st.builds(lambda d, sign: sign * 10**d, st.integers(15, 4400), st.sampled_from([1, -1])),
    st.floats(),
    st.sampled_from([1e16, 2.0**53, 2.0**53 + 2, 1.7976931348623157e308, 5e-324, -0.0, 1e-7]),
    hostile_text,
    st.sampled_from([b"bytes", frozenset({1}), Decimal("1.5"), complex(1, 2)]),
)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


json_data = st.one_of(
    st.recursive(
        json_leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(hostile_text, children, max_size=4),
            st.dictionaries(st.one_of(st.integers(), st.none()), children, min_size=1, max_size=2),
        ),
        max_leaves=10,
    ),
    st.integers(MAX_DATA_DEPTH - 2, MAX_DATA_DEPTH + 2).map(nested),
    # Big strings, up to about 900 kB of UTF-8.
    st.builds(
        lambda char, count: {"blob": char * count},
        st.sampled_from(["x", "é", "😀", "\\"]),
        st.integers(0, 300_000),
    ),
)
schedules = st.one_of(
    st.sampled_from(
        ["@daily", "*/5 * * * *", "every 5 minutes", "every weekday at 9:00", "0 0 29 2 *"]
    ),
    st.sampled_from(["@reboot", "61 * * * *", "every 0 minutes", "in 2024", "0 0 30 2 *"]),
    hostile_text,
)
whens = st.one_of(
    st.datetimes(timezones=st.timezones()),
    st.timedeltas(),
    st.timedeltas(min_value=timedelta(days=-3), max_value=timedelta(days=3)),
)
job_fields = {
    "name": names,
    "queue": names,
    "priority": priorities,
    "data": json_data,
    "scheduled_at": whens,
    "max_attempts": st.one_of(st.integers(-1, 3), st.integers(2**31 - 2, 2**31), garbage),
    "retry": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "backoff": st.sampled_from(["fixed", "linear", "exponential", "quadratic"]),
                "delay": st.one_of(st.floats(0, 3600), st.floats()),
                "until": st.datetimes(timezones=st.timezones()),
            },
        ),
        garbage,
    ),
    "schedule": schedules,
}
jobs = st.fixed_dictionaries({}, optional=job_fields)
#: Jobs that validate (most of the time): for bulk enqueues where one bad job is mixed in.
plain_jobs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=10),
        "queue": st.sampled_from(["default", "mail", "ünï", "a'b"]),
        "priority": st.integers(-5, 5),
        "data": st.dictionaries(st.text(max_size=5), st.integers() | st.text(), max_size=3),
    },
)

# -- expectations -------------------------------------------------------------------------


def expected_json(value: Any) -> Any:
    """``value`` as jsonb gives it back (see the module docstring for the float rule)."""
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and value.is_integer():
            return int(Decimal(text))
        return value + 0.0  # -0.0 -> 0.0
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (list, tuple)):
        return [expected_json(item) for item in value]
    if isinstance(value, dict):
        return {key: expected_json(item) for key, item in value.items()}
    raise AssertionError(f"accepted data holds a {type(value).__name__}")


def same(got: Any, want: Any) -> bool:
    """Equal and of the same JSON types all the way down (``1 == 1.0`` is not enough)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, list):
        return len(got) == len(want) and all(map(same, got, want))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, float) and math.copysign(1, want) != math.copysign(1, got):
        return False
    return bool(got == want)


def table_state(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    """The number of jobs and a digest of their ids and row versions (xmin): any insert, delete
    or update changes it, without hashing megabytes of data on every call."""
    row = conn.execute(
        "SELECT count(*), coalesce(md5(string_agg(j.id::text || ':' || j.xmin::text, ','"
        " ORDER BY j.id)), '') FROM pgqueue.jobs j"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def attempt(conn: psycopg.Connection[Any], call: Callable[[], Any]) -> tuple[Any, bool]:
    """Run ``call``: (result, True), or (None, False) when it raised a pgqueue error, in which
    case the table must be exactly as it was. Any other exception fails the test."""
    before = table_state(conn)
    try:
        return call(), True
    except PgQueueError as exc:
        error = exc
    assert str(error)
    assert table_state(conn) == before, f"{error!r} left rows behind"
    return None, False


def run_worker_over_everything(
    dsn: str, conn: psycopg.Connection[Any], *, batch_size: int = 1
) -> dict[str, int]:
    """Make every pending job due, run a worker until nothing is due, and return the statuses.

    The handler reads every job's data whole and checks it against what get_job returned.
    """
    expected = dict(conn.execute("SELECT id, data FROM pgqueue.jobs"))
    conn.execute("UPDATE pgqueue.jobs SET scheduled_at = now() WHERE status = 'pending'")
    problems: list[str] = []

    def handler(_conn: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        json.dumps(job.data, allow_nan=False)
        if job.id in expected and not same(job.data, expected[job.id]):
            problems.append(f"job {job.id}: data changed")
            raise AssertionError("data changed")

    worker = pgqueue.JobQueueWorker(
        dsn, handler=handler, parallel_count=2, poll_interval=0.1, batch_size=batch_size
    )
    worker.work_off()
    assert problems == []
    errors = conn.execute(
        "SELECT id, name, left(last_error, 300) FROM pgqueue.jobs WHERE last_error IS NOT NULL"
    ).fetchall()
    assert errors == []
    pending_before = conn.execute(
        "SELECT id FROM pgqueue.jobs WHERE status = 'pending' AND id = ANY(%s)"
        " AND name <> 'pgqueue.recurring'",
        (list(expected),),
    ).fetchall()
    assert pending_before == [], "every job that was due must have run"
    return dict(conn.execute("SELECT status, count(*) FROM pgqueue.jobs GROUP BY status"))


# -- the properties -------------------------------------------------------------------------


def check_job(conn: psycopg.Connection[Any], job_id: int, given: dict[str, Any]) -> None:
    """get_job returns exactly what was given (or the documented default)."""
    record = pgqueue.get_job(conn, job_id)
    assert record is not None
    assert record.status is JobStatus.PENDING
    assert record.name == given.get("name", "")
    assert record.queue == given.get("queue", "default")
    priority = given.get("priority")
    assert record.priority == (1 if priority is None else to_priority(priority))
    data = given.get("data")
    assert same(record.data, {} if data is None else expected_json(data))
    assert record.max_attempts == given.get("max_attempts", 5)
    if isinstance(given.get("scheduled_at"), datetime):
        assert record.scheduled_at == given["scheduled_at"]
    schedule = given.get("schedule")
    if schedule is None:
        assert record.schedule is None
    else:
        assert record.schedule is not None
        assert record.schedule["text"] == schedule


def test_add_job_to_queue_round_trips_or_raises_cleanly(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    added = 0

    @DB
    @given(job=jobs, as_keywords=st.booleans())
    def enqueue_one(job: dict[str, Any], as_keywords: bool) -> None:
        nonlocal added
        given_job = {key: value for key, value in job.items() if value is not None}
        if as_keywords:
            job_id, ok = attempt(conn, lambda: pgqueue.add_job_to_queue(conn, **job))
        else:
            job_id, ok = attempt(conn, lambda: pgqueue.add_job_to_queue(conn, job))
        if ok:
            added += 1
            check_job(conn, job_id, given_job)

    enqueue_one()
    assert added >= 20, "the strategies should produce enough valid jobs"
    statuses = run_worker_over_everything(dsn, conn)
    assert statuses.get("completed", 0) >= added


def test_job_data_round_trips_or_raises_cleanly(conn: psycopg.Connection[Any], dsn: str) -> None:
    added = 0

    @DB
    @given(data=json_data, name=st.text(max_size=5), queue=st.text(max_size=5))
    def enqueue_data(data: Any, name: str, queue: str) -> None:
        nonlocal added
        job = {"data": data, "name": name, "queue": queue}
        job_id, ok = attempt(conn, lambda: pgqueue.add_job_to_queue(conn, **job))
        if ok:
            added += 1
            check_job(conn, job_id, {k: v for k, v in job.items() if v is not None})

    enqueue_data()
    assert added >= 50, "the strategies should produce enough valid data"
    statuses = run_worker_over_everything(dsn, conn)
    assert statuses == {"completed": added}


def test_add_jobs_to_queue_writes_all_or_nothing(conn: psycopg.Connection[Any], dsn: str) -> None:
    @DB
    @given(
        batch=st.lists(plain_jobs, min_size=1, max_size=8),
        bad=st.one_of(st.none(), jobs),
        where=st.integers(0, 8),
    )
    def enqueue_many(batch: list[dict[str, Any]], bad: dict[str, Any] | None, where: int) -> None:
        if bad is not None:
            batch = [*batch[:where], bad, *batch[where:]]
        ids, ok = attempt(conn, lambda: pgqueue.add_jobs_to_queue(conn, batch))
        if ok:
            assert len(ids) == len(batch) == len(set(ids))
            for job_id, job in zip(ids, batch, strict=True):
                check_job(conn, job_id, {k: v for k, v in job.items() if v is not None})

    enqueue_many()
    # Hundreds of small jobs: in batches, which also reads them through the batch mode.
    run_worker_over_everything(dsn, conn, batch_size=25)


def test_one_bad_job_among_many_writes_nothing(conn: psycopg.Connection[Any]) -> None:
    good = [{"name": f"job {i}", "data": {"i": i}} for i in range(50)]
    for bad in ({"data": math.nan}, {"priority": 2**31}, {"queue": "\x00"}, {"data": "\ud800"}):
        with pytest.raises(InvalidJobError, match=r"^job 25: "):
            pgqueue.add_jobs_to_queue(conn, [*good[:25], bad, *good[25:]])
        assert table_state(conn)[0] == 0


recurring_calls = st.fixed_dictionaries(
    {
        # Names that are not text at all are left to the other tests: here most calls should
        # succeed, so that the worker below has recurring jobs to run.
        "name": st.one_of(st.text(min_size=1, max_size=8), hostile_text, long_text),
        "priority": st.one_of(st.integers(-5, 5), priorities),
    },
    optional={"data": json_data, "queue": st.one_of(st.text(max_size=5), hostile_text)},
)
intervals = st.one_of(
    st.dictionaries(st.sampled_from(INTERVAL_KEYS), st.integers(1, 100), min_size=1, max_size=3),
    st.dictionaries(
        st.one_of(st.sampled_from(INTERVAL_KEYS), st.text(max_size=3)),
        st.one_of(
            st.integers(0, 1000),
            st.integers(999_990, 1_000_010),
            st.floats(0, 1e7),
            st.floats(),
            garbage,
        ),
        max_size=3,
    ),
    st.timedeltas(min_value=timedelta(0)),
)


def test_add_recurring_job_to_queue_round_trips_or_raises_cleanly(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    targets: dict[str, Any] = {}

    @DB
    @given(call=recurring_calls, interval=intervals, schedule=schedules, use_schedule=st.booleans())
    def add_recurring(
        call: dict[str, Any], interval: Any, schedule: str, use_schedule: bool
    ) -> None:
        if use_schedule:
            call = {**call, "schedule": schedule}
        else:
            try:
                spec = normalize_interval(interval)
            except InvalidJobError:
                spec = None
            # Shorter than a second would rerun without pause while the worker below drains.
            assume(spec is None or timedelta(**_as_timedelta_args(spec)) >= timedelta(seconds=1))
            call = {**call, "interval": interval}
        job_id, ok = attempt(conn, lambda: pgqueue.add_recurring_job_to_queue(conn, **call))
        if not ok:
            return
        record = pgqueue.get_job(conn, job_id)
        assert record is not None
        assert record.name == "pgqueue.recurring"
        assert record.data["name"] == call["name"]
        data = call.get("data")
        assert same(record.data["data"], {} if data is None else expected_json(data))
        assert record.priority == to_priority(call["priority"])
        if call.get("queue") is not None:
            assert record.queue == call["queue"]
        targets[call["name"]] = record.data["data"]

    add_recurring()
    assert len(targets) >= 10
    run_worker_over_everything(dsn, conn)
    # Each recurring job ran once and enqueued its target, which the worker then completed.
    ran = dict(
        conn.execute(
            "SELECT name, count(*) FROM pgqueue.jobs"
            " WHERE name <> 'pgqueue.recurring' AND status = 'completed' GROUP BY name"
        )
    )
    assert set(ran) == set(targets)


def _as_timedelta_args(spec: dict[str, Any]) -> dict[str, float]:
    # Years and months as their shortest (365 and 28 days): a lower bound is all that is needed.
    days = spec.get("years", 0) * 365 + spec.get("months", 0) * 28
    return {
        "days": days + spec.get("days", 0),
        "weeks": spec.get("weeks", 0),
        "hours": spec.get("hours", 0),
        "minutes": spec.get("minutes", 0),
        "seconds": spec.get("seconds", 0),
    }


def test_jsonb_turns_exponent_floats_into_ints(conn: psycopg.Connection[Any]) -> None:
    values = [1e16, 2.0**53, 2.0**53 + 2, 1.7976931348623157e308, 1.5e300, 5e-324, 1e-7, -0.0]
    job_id = pgqueue.add_job_to_queue(conn, data=values)
    record = pgqueue.get_job(conn, job_id)
    assert record is not None
    assert same(
        record.data,
        [
            10**16,
            9007199254740992.0,
            9007199254740994.0,
            17976931348623157 * 10**292,
            15 * 10**299,
            5e-324,
            1e-7,
            0.0,
        ],
    )


# -- payload size -----------------------------------------------------------------------------


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv(MAX_PAYLOAD_ENV, "1000")
    return 1000


def payload_of(size: int) -> dict[str, str]:
    """Data whose JSON text is exactly ``size`` bytes: {"x":"..."} is 8 bytes plus the string."""
    return {"x": "y" * (size - 8)}


def test_the_payload_limit_is_exact_and_writes_nothing_above_it(
    conn: psycopg.Connection[Any], small_limit: int
) -> None:
    job_id = pgqueue.add_job_to_queue(conn, data=payload_of(small_limit))
    before = table_state(conn)
    with pytest.raises(InvalidJobError) as info:
        pgqueue.add_job_to_queue(conn, data=payload_of(small_limit + 1))
    message = str(info.value)
    assert "1,001 bytes" in message
    assert "limit of 1,000 bytes" in message
    assert MAX_PAYLOAD_ENV in message
    many = [{"data": payload_of(10)}] * 5 + [{"data": payload_of(small_limit + 1)}]
    with pytest.raises(InvalidJobError, match=r"^job 5: data is 1,001 bytes"):
        pgqueue.add_jobs_to_queue(conn, many)
    with pytest.raises(InvalidJobError, match="1,001 bytes"):
        pgqueue.add_recurring_job_to_queue(
            conn, name="r", interval={"hours": 1}, data=payload_of(small_limit + 1)
        )
    assert table_state(conn) == before
    record = pgqueue.get_job(conn, job_id)
    assert record is not None
    assert record.data == payload_of(small_limit)


def test_the_payload_limit_counts_bytes_not_characters(
    conn: psycopg.Connection[Any], small_limit: int
) -> None:
    # 250 four-byte characters: 1008 bytes of JSON in 258 characters.
    with pytest.raises(InvalidJobError, match="1,008 bytes"):
        pgqueue.add_job_to_queue(conn, data={"x": "😀" * 250})
    assert table_state(conn)[0] == 0


def test_the_default_payload_limit_refuses_more_than_16_mib(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MAX_PAYLOAD_ENV, raising=False)
    with pytest.raises(InvalidJobError, match=f"limit of {MAX_PAYLOAD_BYTES:,} bytes"):
        pgqueue.add_job_to_queue(conn, data=payload_of(MAX_PAYLOAD_BYTES + 1))
    assert table_state(conn)[0] == 0


def test_a_bad_payload_limit_is_a_configuration_error(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MAX_PAYLOAD_ENV, "lots")
    with pytest.raises(pgqueue.ConfigurationError, match=MAX_PAYLOAD_ENV):
        pgqueue.add_job_to_queue(conn, data={"a": 1})
    assert table_state(conn)[0] == 0


def test_a_job_dequeued_with_data_at_the_depth_limit_runs(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    job_id = pgqueue.add_job_to_queue(conn, data=nested(MAX_DATA_DEPTH))
    with pytest.raises(InvalidJobError, match="nested too deeply"):
        pgqueue.add_job_to_queue(conn, data=nested(MAX_DATA_DEPTH + 1))
    run_worker_over_everything(dsn, conn)
    record = pgqueue.get_job(conn, job_id)
    assert record is not None
    assert record.status is JobStatus.COMPLETED
    assert record.completed_at is not None
    assert record.completed_at <= datetime.now(UTC) + timedelta(minutes=5)
