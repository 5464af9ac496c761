"""Job names and queue names with quotes, semicolons, ``--``, unicode and very long text go in
and come out unchanged, through every API that takes them, and a worker filtered by them runs
their jobs."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgqueue
from pgqueue import InvalidJobError
from pgqueue._input import MAX_NAME_BYTES


def incompressible(size: int) -> str:
    """``size`` bytes of UTF-8 that Postgres cannot compress (so its index limits apply)."""
    rng = random.Random(size)
    alphabet = [chr(c) for c in range(0x21, 0x7F)]  # printable ASCII: one byte each
    return "".join(rng.choice(alphabet) for _ in range(size))


HOSTILE = [
    "it's",
    'say "hi"',
    "a;b",
    "x'); DELETE FROM pgqueue.jobs; --",
    "-- a comment",
    "/* not a comment */",
    "$$ LANGUAGE sql $$",
    "$1",
    "%s",
    "%(name)s",
    "{0}",
    "back\\slash\\",
    "tab\tnew\nline\r",
    "zażółć gęślą jaźń",
    "名前のキュー",
    "😀🚀",
    "\u202eright-to-left",
    "zero\u200bwidth",
    "  padded  ",
    "NULL",
    "default",
    "pgqueue_jobs",
    "a" * 5000,
    "€" * (MAX_NAME_BYTES // 3),  # just under the limit in three-byte characters
    "😀" * (MAX_NAME_BYTES // 4),  # exactly the limit in four-byte characters
    incompressible(MAX_NAME_BYTES),  # exactly the limit, and too random to compress
]
#: Names also usable as queue names and recurring job names (at most MAX_NAME_BYTES bytes).
SHORT = [name for name in HOSTILE if len(name.encode()) <= MAX_NAME_BYTES]


def label(name: str) -> str:
    return repr(name[:20]) + (f"..{len(name.encode())}B" if len(name) > 20 else "")


def scalar(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_hostile_names_go_in_and_out_unchanged(conn: psycopg.Connection[Any], dsn: str) -> None:
    # One database for all of them (a fresh one per name costs more than the checks).
    for text in HOSTILE:
        conn.execute("TRUNCATE pgqueue.jobs, pgqueue.queues")
        try:
            check_hostile_name(conn, dsn, text)
        except AssertionError as exc:
            raise AssertionError(f"with the name {label(text)}: {exc}") from exc


def check_hostile_name(conn: psycopg.Connection[Any], dsn: str, text: str) -> None:
    """Every API that takes a name or a queue name gives back ``text`` unchanged."""
    queue = text if text in SHORT else "q"
    one = pgqueue.add_job_to_queue(conn, name=text, queue=queue, data={text: text})
    many = pgqueue.add_jobs_to_queue(
        conn, [{"name": text, "queue": queue, "data": [text]}, {"name": text, "queue": queue}]
    )
    decoys = [
        pgqueue.add_job_to_queue(conn, name=text + "x", queue=queue),
        pgqueue.add_job_to_queue(conn, name=text, queue="another queue"),
    ]
    ids = [one, *many]
    for job_id in ids:
        record = pgqueue.get_job(conn, job_id)
        assert record is not None
        assert (record.name, record.queue) == (text, queue)
    first = pgqueue.get_job(conn, one)
    assert first is not None
    assert first.data == {text: text}

    listed = pgqueue.list_jobs(conn, name=text, queue=queue)
    assert sorted(job.id for job in listed) == sorted(ids)
    assert {job.name for job in pgqueue.list_jobs(conn, queue=queue)} == {text, text + "x"}
    size = pgqueue.pending_queue_size(conn, name=text, queues=[queue])
    assert size["pending_count"] == 3

    pgqueue.configure_queue(conn, queue, max_concurrency=2)
    assert scalar(conn, "SELECT max_concurrency FROM pgqueue.queues WHERE name = %s", (queue,)) == 2

    # A worker restricted to this name and queue runs exactly these jobs.
    ran: list[tuple[str, str, Any]] = []
    worker = pgqueue.JobQueueWorker(
        dsn,
        text,
        handler=lambda _conn, job: ran.append((job.name, job.queue, job.data)),
        queues=[queue],
        poll_interval=0.1,
    )
    worker.work_off()
    assert sorted(ran, key=repr) == sorted(
        [(text, queue, {text: text}), (text, queue, [text]), (text, queue, {})], key=repr
    )
    for job_id in ids:
        record = pgqueue.get_job(conn, job_id)
        assert record is not None
        assert record.status is pgqueue.JobStatus.COMPLETED
    assert pgqueue.pending_queue_size(conn, name=text, queues=[queue])["pending_count"] == 0

    # cancel_jobs matches this name (and queue) exactly, not the decoys.
    again = pgqueue.add_job_to_queue(conn, name=text, queue=queue, data={"k": text})
    assert pgqueue.cancel_jobs(conn, text, {"k": text}, queue=queue) == 1
    cancelled = pgqueue.get_job(conn, again)
    assert cancelled is not None
    assert cancelled.status is pgqueue.JobStatus.CANCELLED
    for decoy in decoys:
        record = pgqueue.get_job(conn, decoy)
        assert record is not None
        assert record.status is pgqueue.JobStatus.PENDING

    # As a recurring job's name (indexed, so only names of at most MAX_NAME_BYTES bytes).
    if text in SHORT:
        rec_id = pgqueue.add_recurring_job_to_queue(
            conn, name=text, interval={"hours": 1}, data={text: 1}, queue=queue
        )
        assert pgqueue.add_recurring_job_to_queue(conn, name=text, schedule="@daily") == rec_id
        record = pgqueue.get_job(conn, rec_id)
        assert record is not None
        assert (record.name, record.data["name"], record.queue) == (
            "pgqueue.recurring",
            text,
            queue,
        )
        assert pgqueue.list_jobs(conn, name="pgqueue.recurring") == [record]


def queue_calls(conn: psycopg.Connection[Any], dsn: str, text: str) -> list[Callable[[], object]]:
    """Every call that takes a queue name, with ``text`` as the queue."""
    return [
        lambda: pgqueue.add_job_to_queue(conn, queue=text),
        lambda: pgqueue.add_jobs_to_queue(conn, [{"name": "ok"}, {"queue": text}]),
        lambda: pgqueue.add_recurring_job_to_queue(
            conn, name="ok", interval={"hours": 1}, queue=text
        ),
        lambda: pgqueue.configure_queue(conn, text, max_concurrency=1),
        lambda: pgqueue.list_jobs(conn, queue=text),
        lambda: pgqueue.pending_queue_size(conn, queues=[text]),
        lambda: pgqueue.cancel_jobs(conn, queue=text),
        lambda: pgqueue.JobQueueWorker(dsn, handler=lambda c, j: None, queues=[text]),
    ]


def test_an_empty_queue_name_is_refused_everywhere(conn: psycopg.Connection[Any], dsn: str) -> None:
    for call in queue_calls(conn, dsn, ""):
        with pytest.raises(InvalidJobError, match=r"queue( name)? must not be empty$"):
            call()
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0
    assert scalar(conn, "SELECT count(*) FROM pgqueue.queues") == 0


@pytest.mark.parametrize(
    "text", [incompressible(MAX_NAME_BYTES + 1), incompressible(4000), "😀" * 513], ids=label
)
def test_a_queue_or_recurring_name_over_the_limit_is_refused_everywhere(
    conn: psycopg.Connection[Any], dsn: str, text: str
) -> None:
    size = len(text.encode())
    message = f"{size} bytes long \\(UTF-8\\); at most {MAX_NAME_BYTES} bytes"
    calls = [
        *queue_calls(conn, dsn, text),
        lambda: pgqueue.add_recurring_job_to_queue(conn, name=text, interval={"hours": 1}),
    ]
    for call in calls:
        with pytest.raises(InvalidJobError, match=message):
            call()
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 0
    assert scalar(conn, "SELECT count(*) FROM pgqueue.queues") == 0
    # A plain job's name is not indexed: any length goes in and out unchanged.
    job_id = pgqueue.add_job_to_queue(conn, name=text)
    record = pgqueue.get_job(conn, job_id)
    assert record is not None
    assert record.name == text


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    # Any text but the reserved prefix of pgqueue's own jobs (refused, tested elsewhere).
    name=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")).filter(
        lambda text: not text.startswith("pgqueue.")
    ),
    queue=st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=50
    ),
)
def test_any_valid_text_round_trips_and_filters_exactly(
    conn: psycopg.Connection[Any], name: str, queue: str
) -> None:
    conn.execute("TRUNCATE pgqueue.jobs")
    job_id = pgqueue.add_job_to_queue(conn, name=name, queue=queue)
    pgqueue.add_job_to_queue(conn, name=name + "'", queue=queue)
    record = pgqueue.get_job(conn, job_id)
    assert record is not None
    assert (record.name, record.queue) == (name, queue)
    assert [job.id for job in pgqueue.list_jobs(conn, name=name, queue=queue)] == [job_id]
    assert pgqueue.pending_queue_size(conn, name=name, queues=[queue])["pending_count"] == 1
    assert pgqueue.cancel_jobs(conn, name, queue=queue) == 1
