"""pgqueue.aio: enqueue on an AsyncConnection (joining its transaction) or an AsyncConnectionPool,
and AsyncJobQueueWorker running async handlers concurrently in their jobs' async transactions."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from worker_helpers import create_results_table, result_ids, status, wait_until

import pgqueue
from pgqueue import aio

DEADLINE = 30.0


async def eventually(predicate: Callable[[], Any], what: str) -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy; fail after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


FAST_RETRY = {"backoff": "fixed", "delay": 0.1, "jitter": 0}


# -- enqueue ---------------------------------------------------------------------------


def test_async_enqueue_joins_the_callers_transaction(dsn, conn):
    async def main() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            lost: list[int] = []

            async def failing_request() -> None:
                async with aconn.transaction():
                    await aconn.execute("CREATE TABLE orders (id int)")
                    lost.append(await aio.add_job_to_queue(aconn, name="mail", data={"order": 1}))
                    raise RuntimeError("request failed")

            # A request's transaction that fails: the job never existed.
            with pytest.raises(RuntimeError, match="request failed"):
                await failing_request()
            # One that commits: the order and its job together.
            async with aconn.transaction():
                await aconn.execute("CREATE TABLE orders (id int)")
                kept = await aio.add_job_to_queue(
                    aconn, {"name": "mail", "data": {"order": 2}}, priority=3
                )
                # Inside the transaction, the job is visible to it alone.
                assert await aio.get_job(aconn, kept) is not None
                assert pgqueue.get_job(conn, kept) is None
            return lost[0], kept

    lost, kept = asyncio.run(main())
    assert pgqueue.get_job(conn, lost) is None
    job = pgqueue.get_job(conn, kept)
    assert job is not None
    assert (job.name, job.data, job.priority, job.status) == ("mail", {"order": 2}, 3, "pending")


def test_async_calls_on_a_pool_commit_and_match_the_blocking_ones(dsn, conn):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
            ids = await aio.add_jobs_to_queue(
                pool, [{"name": "a", "data": [1]}, {"name": "b", "queue": "mail"}]
            )
            assert ids == sorted(ids)
            assert [status(conn, i) for i in ids] == ["pending", "pending"]
            recurring = await aio.add_recurring_job_to_queue(
                pool, name="tick", interval={"minutes": 5}
            )
            assert pgqueue.get_job(conn, recurring).name == "pgqueue.recurring"  # type: ignore[union-attr]
            assert await aio.pending_queue_size(pool, queues=["mail"]) == {
                "pending_count": 1,
                "scheduled_count": 0,
                "running_count": 0,
            }
            assert await aio.get_job(pool, ids[0]) == pgqueue.get_job(conn, ids[0])
            assert await aio.cancel_job(pool, ids[0]) is True
            assert await aio.cancel_jobs(pool, "b") == 1
            assert await aio.retry_job(pool, ids[0]) is True
            assert await aio.retry_failed_jobs(pool, name="b") == 1
            assert await aio.average_time_to_completion(
                pool, datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)
            ) == pytest.approx(0.0)
            assert await aio.add_jobs_to_queue(pool, []) == []

    asyncio.run(main())
    assert pgqueue.pending_queue_size(conn)["pending_count"] == 3


def test_async_bulk_enqueue_streams_and_a_late_bad_job_keeps_the_transaction(dsn, conn):
    jobs = [{"name": "ok", "data": i} for i in range(2_500)]

    async def main() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            async with aconn.transaction():
                ids = await aio.add_jobs_to_queue(aconn, jobs)
                with pytest.raises(pgqueue.InvalidJobError, match=r"^job 2000: "):
                    await aio.add_jobs_to_queue(aconn, [*jobs[:2000], {"nmae": "x"}, *jobs])
            return ids

    ids = asyncio.run(main())
    rows = conn.execute("SELECT id, data FROM pgqueue.jobs ORDER BY id").fetchall()
    assert rows == [(job_id, i) for i, job_id in enumerate(ids)]


def test_async_bad_input_raises_pgqueues_errors_before_connecting(dsn, conn):
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            with pytest.raises(pgqueue.InvalidJobError, match="unknown job key"):
                await aio.add_job_to_queue(aconn, {"nmae": "x"})
            with pytest.raises(pgqueue.InvalidJobError, match="job 1: "):
                await aio.add_jobs_to_queue(aconn, [{"name": "ok"}, {"priority": "urgent!"}])
            with pytest.raises(pgqueue.InvalidJobError, match="give exactly one"):
                await aio.add_recurring_job_to_queue(aconn, name="x")
            # Nothing was sent: the connection has no transaction open.
            assert aconn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with pytest.raises(pgqueue.ConfigurationError, match="AsyncConnection"):
            await aio.add_job_to_queue(conn, name="sync conn")  # type: ignore[arg-type]

    asyncio.run(main())
    assert pgqueue.pending_queue_size(conn)["pending_count"] == 0


def test_async_admin_calls_list_clear_configure_and_clean_up(dsn, conn):
    """aio's list_jobs, clear_jobs, configure_queue, register_cleanup and run_cleanup do what
    the blocking ones do, on a connection (joining its transaction) and on a pool."""
    old = pgqueue.add_job_to_queue(conn, name="old", queue="q1")
    conn.execute(
        "UPDATE pgqueue.jobs SET status = 'completed', updated_at = now() - interval '3 days',"
        " completed_at = now() - interval '3 days' WHERE id = %s",
        (old,),
    )
    pending = pgqueue.add_jobs_to_queue(conn, [{"name": "a", "queue": "q1"}, {"name": "b"}])

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            listed = await aio.list_jobs(aconn, status="pending", queue="q1")
            assert [job.id for job in listed] == [pending[0]]
            async with aconn.transaction():
                await aio.configure_queue(aconn, "q1", max_concurrency=3, retry={"delay": 5})
                # A later rule for the same name and status wins, as with the blocking call.
                rules = [
                    {"type": "old", "purge_after_days": 9},
                    {"type": "old", "purge_after_days": 2},
                ]
                await aio.register_cleanup(aconn, rules, every={"minutes": 10})
            with pytest.raises(pgqueue.InvalidJobError, match="limit"):
                await aio.list_jobs(aconn, limit=0)
        async with AsyncConnectionPool(dsn, open=False) as pool:
            assert await aio.run_cleanup(pool) == 1
            assert await aio.clear_jobs(pool, queue="q1") == 1

    asyncio.run(main())
    assert pgqueue.get_job(conn, old) is None
    assert sorted(job.name for job in pgqueue.list_jobs(conn)) == ["b", "pgqueue.recurring"]
    rows = conn.execute("SELECT name, max_concurrency, retry FROM pgqueue.queues").fetchall()
    assert rows == [("q1", 3, {"delay": 5})]
    rules = conn.execute(
        "SELECT DISTINCT name, extract(epoch FROM purge_after) / 86400 FROM pgqueue.cleanup_rules"
    ).fetchall()
    assert rules == [("old", 2)]


def test_async_calls_keep_the_public_signature():
    import inspect

    assert list(inspect.signature(aio.add_job_to_queue).parameters)[:2] == ["sql", "job"]
    assert aio.add_job_to_queue.__doc__ == pgqueue.add_job_to_queue.__doc__
    assert aio.add_job_to_queue.__name__ == "add_job_to_queue"
    assert list(inspect.signature(pgqueue.get_job).parameters) == ["sql", "job_id"]


# -- the worker ------------------------------------------------------------------------


def test_async_worker_runs_parallel_count_handlers_at_once(dsn, conn):
    create_results_table(conn)
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "together"} for _ in range(4)])

    async def main() -> dict[str, int]:
        arrived = 0
        all_in = asyncio.Event()

        async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
            nonlocal arrived
            await aconn.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
            arrived += 1
            if arrived == 4:
                all_in.set()
            # Only returns if all four run at once on this loop.
            async with asyncio.timeout(DEADLINE):
                await all_in.wait()

        worker = aio.AsyncJobQueueWorker(dsn, handler=handler, parallel_count=4, poll_interval=0.1)
        async with worker:
            await eventually(lambda: len(result_ids(conn)) == 4, "four results")
            await eventually(
                lambda: all(status(conn, i) == "completed" for i in ids), "four completions"
            )
        assert not worker.is_started
        return worker.stats.as_dict()

    assert asyncio.run(main()) == {"completed": 4, "retried": 0, "failed": 0}


def test_a_failing_async_handler_rolls_back_and_the_job_is_retried(dsn, conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="flaky", retry=FAST_RETRY)
    seen: list[int] = []

    async def flaky(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> str:
        seen.append(job.attempts)
        await aconn.execute("INSERT INTO results (job_id, note) VALUES (%s, 'x')", (job.id,))
        if job.attempts == 1:
            # The first attempt's state, from outside, is not visible yet: the job is running.
            raise ValueError("boom")
        return "done on the second try"

    async def main() -> None:
        async with aio.AsyncJobQueueWorker(dsn, handler={"flaky": flaky}, poll_interval=0.1):
            await eventually(lambda: status(conn, job_id) == "completed", "the retry")

    asyncio.run(main())
    assert seen == [1, 2]
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.attempts == 2
    assert job.result == "done on the second try"
    assert job.last_error is not None
    assert job.last_error.startswith("ValueError: boom")
    # The first attempt's insert was rolled back: one row, from the second.
    assert result_ids(conn) == [job_id]


def test_an_async_handler_out_of_attempts_fails_for_good(dsn, conn):
    job_id = pgqueue.add_job_to_queue(conn, name="bad", max_attempts=2, retry=FAST_RETRY)

    async def bad(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        raise pgqueue.JobFailed(f"nope {job.attempts}")

    async def main() -> dict[str, int]:
        worker = aio.AsyncJobQueueWorker(dsn, handler=bad, poll_interval=0.1)
        async with worker:
            await eventually(lambda: status(conn, job_id) == "failed", "the job to fail")
        return worker.stats.as_dict()

    assert asyncio.run(main()) == {"completed": 0, "retried": 1, "failed": 1}
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert (job.attempts, job.last_error) == (2, "nope 2")


def test_async_stop_waits_for_the_running_handler_and_then_takes_nothing(dsn, conn):
    create_results_table(conn)
    first = pgqueue.add_job_to_queue(conn, name="slow")

    async def main() -> None:
        started = asyncio.Event()

        async def slow(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
            started.set()
            await asyncio.sleep(0.5)
            await aconn.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))

        worker = aio.AsyncJobQueueWorker(dsn, handler=slow, poll_interval=0.1)
        await worker.start()
        await asyncio.wait_for(started.wait(), DEADLINE)
        await worker.stop()
        # stop() returned after the handler finished and committed.
        assert status(conn, first) == "completed"

    asyncio.run(main())
    later = pgqueue.add_job_to_queue(conn, name="slow")
    time.sleep(0.3)
    assert status(conn, later) == "pending"
    assert result_ids(conn) == [first]


def test_async_timeout_cancels_the_handler_and_fails_the_attempt(dsn, conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="hang", max_attempts=1, timeout=0.3)

    async def hang(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        await aconn.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        await aconn.execute("SELECT pg_sleep(30)")  # cancelled in the server too

    async def main() -> None:
        async with aio.AsyncJobQueueWorker(dsn, handler=hang, poll_interval=0.1, timeout=60):
            await eventually(lambda: status(conn, job_id) == "failed", "the timeout")

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 10
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.last_error == "JobTimeout: timed out after 0.3 s (attempt 1 of 1)"
    assert result_ids(conn) == []


def test_async_work_off_runs_what_is_due_and_returns(dsn, conn):
    due = pgqueue.add_jobs_to_queue(conn, [{"name": "n", "data": i} for i in range(5)])
    future = pgqueue.add_job_to_queue(conn, name="n", scheduled_at=timedelta(hours=1))
    seen: list[Any] = []

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        seen.append(job.data)

    async def main() -> dict[str, int]:
        worker = aio.AsyncJobQueueWorker(dsn, handler=handler, parallel_count=2)
        return (await worker.work_off()).as_dict()

    assert asyncio.run(main()) == {"completed": 5, "retried": 0, "failed": 0}
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert [status(conn, i) for i in due] == ["completed"] * 5
    assert status(conn, future) == "pending"


def test_async_worker_rejects_bad_options(dsn):
    async def handler(aconn: Any, job: Any) -> None:
        return None

    with pytest.raises(pgqueue.ConfigurationError, match="parallel_count"):
        aio.AsyncJobQueueWorker(dsn, handler=handler, parallel_count=0)
    with pytest.raises(pgqueue.ConfigurationError, match="AsyncConnectionPool"):
        aio.AsyncJobQueueWorker(42, handler=handler)  # type: ignore[arg-type]
    with pytest.raises(pgqueue.ConfigurationError, match="timeout"):
        aio.AsyncJobQueueWorker(dsn, handler=handler, timeout=-1)


# -- crashes ---------------------------------------------------------------------------

ASYNC_WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import pathlib
    import sys

    from pgqueue import aio

    dsn, marker = sys.argv[1], pathlib.Path(sys.argv[2])


    async def handler(conn, job):
        await conn.execute("INSERT INTO results (job_id, note) VALUES (%s, 'killed')", (job.id,))
        # Written whole, then renamed: the test polls for the file and reads it.
        marker.with_suffix('.tmp').write_text(str(job.id))
        marker.with_suffix('.tmp').replace(marker)
        await asyncio.sleep(600)


    async def main():
        async with aio.AsyncJobQueueWorker(dsn, handler=handler, poll_interval=0.1):
            await asyncio.sleep(600)


    asyncio.run(main())
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_an_async_worker_killed_mid_job_loses_nothing(conn, dsn, tmp_path):
    create_results_table(conn)
    victim = pgqueue.add_job_to_queue(conn, name="crash", retry=FAST_RETRY)
    script = tmp_path / "aworker.py"
    script.write_text(ASYNC_WORKER_SCRIPT)
    marker = tmp_path / "running"
    with subprocess.Popen([sys.executable, str(script), dsn, str(marker)]) as proc:
        try:
            wait_until(marker.exists, what="the subprocess to start the job")
            wait_until(lambda: status(conn, victim) == "running", what="the job as running")
        finally:
            proc.send_signal(signal.SIGKILL)  # mid-job (or, on failure, to clean up)
    assert proc.returncode == -signal.SIGKILL

    async def survivor(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        await aconn.execute("INSERT INTO results (job_id, note) VALUES (%s, 'survivor')", (job.id,))

    async def main() -> None:
        async with aio.AsyncJobQueueWorker(dsn, handler=survivor, poll_interval=0.1):
            await eventually(lambda: status(conn, victim) == "completed", "the victim to rerun")

    asyncio.run(main())
    assert conn.execute("SELECT job_id, note FROM results").fetchall() == [(victim, "survivor")]
    job = pgqueue.get_job(conn, victim)
    assert job is not None
    assert job.attempts == 2
    assert job.last_error is not None
    assert "the worker running this job died (crashed attempt 1 of 5)" in job.last_error


def test_an_async_handler_may_not_end_the_jobs_transaction(dsn, conn):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="rude", max_attempts=1)

    async def rude(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> None:
        await aconn.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))
        await aconn.commit()

    async def main() -> None:
        async with aio.AsyncJobQueueWorker(dsn, handler=rude, poll_interval=0.1):
            await eventually(lambda: status(conn, job_id) == "failed", "the attempt to fail")

    asyncio.run(main())
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.last_error is not None
    assert job.last_error.startswith("RuntimeError: the handler tried to end the job's transaction")
    assert result_ids(conn) == []


def test_an_async_handlers_result_postgres_cannot_store_fails_the_attempt(dsn, conn):
    bad = pgqueue.add_job_to_queue(conn, name="odd", max_attempts=1)
    good = pgqueue.add_job_to_queue(conn, name="fine")

    async def handler(aconn: psycopg.AsyncConnection[Any], job: pgqueue.JobRecord) -> str:
        return "NUL \x00 inside" if job.name == "odd" else "ok"

    async def main() -> None:
        async with aio.AsyncJobQueueWorker(dsn, handler=handler, poll_interval=0.1):
            await eventually(lambda: status(conn, bad) == "failed", "the attempt to fail")
            await eventually(lambda: status(conn, good) == "completed", "the next job")

    asyncio.run(main())
    job = pgqueue.get_job(conn, bad)
    assert job is not None
    assert job.last_error is not None
    assert job.last_error.startswith("InvalidJobError: the handler's result must not contain NUL")
    assert pgqueue.get_job(conn, good).result == "ok"
