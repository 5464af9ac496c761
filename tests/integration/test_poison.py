"""Poison jobs: a handler that kills its worker process every time fails after max_attempts,
with an error that says so, waits out its retry delay between attempts, and never takes the
other jobs down with it (real worker processes, really killed)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from worker_helpers import DEADLINE, create_results_table, result_ids

import pgqueue
from pgqueue import _queries as q
from pgqueue.supervisor import Supervisor

WORKER_SCRIPT = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import time

    import pgqueue

    dsn, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    batch_size, parallel_count = int(sys.argv[4]), int(sys.argv[5])


    def others_started(count):
        try:
            with open(log + ".work") as f:
                return len(f.read().split()) >= count
        except FileNotFoundError:
            return False


    def handler(conn, job):
        if job.name == "poison":
            # Waits (a little) for the jobs it must crash beside to be in their handlers.
            deadline = time.monotonic() + 10
            while not others_started(job.data.get("beside", 0)) and time.monotonic() < deadline:
                time.sleep(0.01)
            with open(log, "a") as f:
                f.write(f"{time.time()}\\n")
            if mode == "exit":
                os._exit(1)
            os.kill(os.getpid(), signal.SIGKILL)
        with open(log + ".work", "a") as f:
            f.write(f"{job.id}\\n")
        time.sleep(job.data.get("sleep", 0))
        conn.execute("INSERT INTO results (job_id, note) VALUES (%s, 'done')", (job.id,))


    worker = pgqueue.JobQueueWorker(
        dsn, handler=handler, poll_interval=0.05, batch_size=batch_size,
        parallel_count=parallel_count,
    )
    worker.start()
    time.sleep(600)
    """
)


def run_until(
    dsn: str,
    tmp_path: Path,
    done: Any,
    *,
    mode: str = "exit",
    batch_size: int = 1,
    parallel_count: int = 1,
) -> tuple[int, list[float]]:
    """Run worker processes one after the other (a new one each time one dies, as a process
    supervisor would) until ``done()``; return how many died and when the poison job started."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    log = tmp_path / "poison.log"
    deaths = 0
    deadline = time.monotonic() + DEADLINE
    while not done():
        assert time.monotonic() < deadline, f"not done after {DEADLINE:.0f} s ({deaths} deaths)"
        proc = subprocess.Popen(
            [sys.executable, str(script), dsn, str(log), mode, str(batch_size), str(parallel_count)]
        )
        try:
            while proc.poll() is None and not done() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            else:
                assert proc.returncode in (1, -signal.SIGKILL), proc.returncode
                deaths += 1
    starts = [float(line) for line in log.read_text().split()] if log.exists() else []
    return deaths, starts


def statuses(conn: psycopg.Connection[Any], ids: list[int]) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT status FROM pgqueue.jobs WHERE id = ANY (%s) ORDER BY id", (ids,)
        )
    ]


@pytest.mark.parametrize("mode", ["exit", "sigkill"])
def test_a_poison_job_fails_after_max_attempts_and_the_others_complete(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, mode: str
) -> None:
    create_results_table(conn)
    delay = 1.0
    poison = pgqueue.add_job_to_queue(
        conn,
        name="poison",
        priority=0,  # first in line, every time it is due
        max_attempts=3,
        retry={"backoff": "fixed", "delay": delay, "jitter": 0},
    )
    others = pgqueue.add_jobs_to_queue(conn, [{"name": "work", "priority": 1} for _ in range(6)])

    def done() -> bool:
        return statuses(conn, [poison]) == ["failed"] and set(statuses(conn, others)) == {
            "completed"
        }

    deaths, starts = run_until(dsn, tmp_path, done, mode=mode)

    # One death per attempt, no more: it did not loop.
    assert deaths == 3
    assert len(starts) == 3
    # Each crashed attempt counted for the backoff too: the next waited out the delay.
    assert all(later - earlier >= delay for earlier, later in itertools.pairwise(starts))
    job = pgqueue.get_job(conn, poison)
    assert job is not None
    assert (job.status, job.attempts, job.crashes) == (pgqueue.JobStatus.FAILED, 3, 3)
    assert job.last_error is not None
    assert job.last_error.startswith(
        "WorkerCrashed: the worker running this job died (crashed attempt 3 of 3)"
    )
    # The others were not starved (they ran while the poison job waited) nor blamed.
    assert result_ids(conn) == others
    for job_id in others:
        other = pgqueue.get_job(conn, job_id)
        assert other is not None
        assert (other.attempts, other.crashes, other.last_error) == (1, 0, None)
    assert conn.execute("SELECT count(*) FROM pgqueue.job_starts").fetchone() == (0,)


def test_a_crashed_batch_blames_nobody_and_its_jobs_run_alone(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    create_results_table(conn)
    retry = {"backoff": "fixed", "delay": 0.2, "jitter": 0}
    first = pgqueue.add_jobs_to_queue(conn, [{"name": "work"} for _ in range(2)])
    poison = pgqueue.add_job_to_queue(conn, name="poison", max_attempts=2, retry=retry)
    rest = pgqueue.add_jobs_to_queue(conn, [{"name": "work"} for _ in range(2)])
    others = first + rest

    def done() -> bool:
        return statuses(conn, [poison]) == ["failed"] and set(statuses(conn, others)) == {
            "completed"
        }

    deaths, _ = run_until(dsn, tmp_path, done, batch_size=5)

    # The batch died with it once (nobody knew whose handler it was), then it ran alone.
    assert deaths == 1 + 2
    job = pgqueue.get_job(conn, poison)
    assert job is not None
    assert (job.status, job.attempts, job.crashes) == (pgqueue.JobStatus.FAILED, 2, 3)
    assert job.last_error is not None
    assert "crashed attempt 2 of 2" in job.last_error
    assert result_ids(conn) == others
    for job_id in others:
        other = pgqueue.get_job(conn, job_id)
        assert other is not None
        # Its first attempt died with the batch: a crash, not an attempt, and no error.
        assert (other.attempts, other.crashes, other.last_error) == (1, 1, None)


def test_jobs_running_beside_a_poison_job_are_not_blamed(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    create_results_table(conn)
    slow = pgqueue.add_jobs_to_queue(
        conn, [{"name": "work", "priority": 0, "data": {"sleep": 1.0}} for _ in range(2)]
    )
    poison = pgqueue.add_job_to_queue(
        conn,
        name="poison",
        priority=1,
        max_attempts=2,
        retry={"backoff": "fixed", "delay": 0.2, "jitter": 0},
        scheduled_at=timedelta(seconds=0.3),  # starts while the slow ones run
        data={"beside": 2},  # and kills its process once they are in their handlers
    )

    def done() -> bool:
        return statuses(conn, [poison]) == ["failed"] and set(statuses(conn, slow)) == {"completed"}

    deaths, _ = run_until(dsn, tmp_path, done, parallel_count=3)

    # Its first crash took the slow jobs down too: nobody was blamed. Then it ran in
    # quarantine (alone in its process) and was blamed each time.
    assert deaths == 1 + 2
    job = pgqueue.get_job(conn, poison)
    assert job is not None
    assert (job.status, job.attempts) == (pgqueue.JobStatus.FAILED, 2)
    for job_id in slow:
        other = pgqueue.get_job(conn, job_id)
        assert other is not None
        assert (other.status, other.attempts, other.crashes) == ("completed", 1, 1)
        assert other.last_error is None
    assert result_ids(conn) == slow


def test_a_crash_in_quarantine_is_blamed_even_when_the_claim_died_with_it(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """The start record of a job claimed in the transaction that settled its last crash is
    committed at once (it does not wait for that transaction), and when the process dies
    with the claim, rolling its settlement back, the next dequeue blames the job."""
    poison = pgqueue.add_job_to_queue(conn, name="poison", max_attempts=3)
    other = pgqueue.add_job_to_queue(conn, name="work", priority=9)
    # Process 1 died running both (their start records as it left them).
    conn.execute(
        "INSERT INTO pgqueue.job_starts (job_id, attempt, process, token)"
        " VALUES (%s, 1, 1, 11), (%s, 1, 1, 12)",
        (poison, other),
    )
    with psycopg.connect(dsn) as claim:
        # Process 2: its crash shared, it is claimed alone, in quarantine.
        rows = claim.execute(
            "SELECT id, attempts, crashes FROM pgqueue.dequeue(1, NULL, ARRAY['poison'])"
        ).fetchall()
        assert rows == [(poison, 1, 1)]
        with psycopg.connect(dsn, autocommit=True) as side:
            side.execute("SET lock_timeout = '5s'")
            # The worker's own statement (pgqueue.supervisor sends it through libpq).
            result = side.pgconn.exec_params(
                q.START_JOBS,
                [
                    *(f"{{{poison}}}".encode(), b"{1}", b"{NULL}", b"w", b"2", b"{21}"),
                    *(b"{}", b"{}", b"{f}"),
                ],
            )
            assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, result.error_message
        # The handler kills process 2: its transaction is rolled back.
        claim.rollback()
    # Process 3: the crash of process 2 was the job's alone, counted after the first.
    assert conn.execute("SELECT * FROM pgqueue.dequeue(1, NULL, ARRAY['poison'])").fetchall() == []
    job = pgqueue.get_job(conn, poison)
    assert job is not None
    assert (job.status, job.attempts, job.crashes) == (pgqueue.JobStatus.PENDING, 1, 2)
    assert job.last_error is not None
    assert "crashed attempt 1 of 3" in job.last_error


@pytest.mark.parametrize("batch_size", [1, 5])
def test_a_crashed_job_behind_a_fresh_one_is_blamed_and_runs_alone(
    conn: psycopg.Connection[Any], dsn: str, batch_size: int
) -> None:
    """A claim settles the crash of any job it picks, not only of the first: a crashed job
    queued behind a fresh one is blamed, then runs alone, in a transaction of its own."""
    retry = {"backoff": "fixed", "delay": 0, "jitter": 0}
    fresh = pgqueue.add_jobs_to_queue(conn, [{"name": "work", "priority": 0}] * 2)
    crashed = pgqueue.add_job_to_queue(conn, name="work", priority=1, retry=retry)
    # Process 1 died running it alone (its start record as it left it).
    conn.execute(
        "INSERT INTO pgqueue.job_starts (job_id, attempt, process, token) VALUES (%s, 1, 1, 11)",
        (crashed,),
    )
    calls: list[tuple[int, int, int]] = []

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        row = c.execute("SELECT txid_current()").fetchone()
        assert row is not None
        calls.append((job.id, job.crashes, row[0]))

    worker = pgqueue.JobQueueWorker(dsn, handler=handler, batch_size=batch_size)
    worker.work_off()

    assert statuses(conn, [*fresh, crashed]) == ["completed"] * 3
    job = pgqueue.get_job(conn, crashed)
    assert job is not None
    assert (job.attempts, job.crashes) == (2, 1), "the crash counted as an attempt"
    ((_, crashes, txid),) = [call for call in calls if call[0] == crashed]
    assert crashes == 1
    assert [call[0] for call in calls if call[2] == txid] == [crashed], "it ran alone"
    assert conn.execute("SELECT count(*) FROM pgqueue.job_starts").fetchone() == (0,)


def counting_supervisor(dsn: str) -> tuple[Supervisor, list[int]]:
    """A supervisor and, as it sends start statements, the number of starts in each."""
    supervisor = Supervisor(
        lambda: psycopg.connect(dsn, autocommit=True),
        worker_id="test:1",
        on_orphan=lambda owner, watch: None,
    )
    sends: list[int] = []
    send = supervisor._send

    def counting_send(query: bytes, params: Any) -> None:
        sends.append(len(params[0].split(b",")))
        send(query, params)

    supervisor._send = counting_send  # type: ignore[method-assign]
    return supervisor, sends


def test_the_start_records_of_slots_waiting_for_the_side_connection_go_in_one_statement(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """Claims whose starts queue up while the side connection is busy are recorded together,
    each with its own token and its own shared flag (a claim of one job is not shared)."""
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "w"} for _ in range(4)])
    jobs = [pgqueue.get_job(conn, job_id) for job_id in ids]
    assert all(job is not None for job in jobs)
    supervisor, sends = counting_supervisor(dsn)
    claims = [([jobs[0]], 101), ([jobs[1]], 102), ([jobs[2], jobs[3]], 103)]
    with supervisor._side_lock:  # the side connection is busy
        threads = [threading.Thread(target=supervisor.start_claim, args=claim) for claim in claims]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + DEADLINE
        while len(supervisor._queued) < len(claims) and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(DEADLINE)
    try:
        assert sends == [4]  # one statement for the three claims
        supervisor._call(q.FORGET_STARTS, [b"{}", b"0"])  # waits for the replies
        rows = conn.execute(
            "SELECT job_id, token, shared FROM pgqueue.job_starts ORDER BY job_id"
        ).fetchall()
        assert rows == [
            (ids[0], 101, False),
            (ids[1], 102, False),
            (ids[2], 103, True),
            (ids[3], 103, True),
        ]
    finally:
        for token in (101, 102, 103):
            supervisor.end_claim(token)
        supervisor.stop()


def test_starts_queued_while_a_start_statement_is_unanswered_go_with_the_next_one(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """A slot that finds the side connection's last statement unanswered waits for its reply
    before it takes the queued starts: those queued meanwhile go in its statement (one
    transaction), not in one each after it."""
    ids = pgqueue.add_jobs_to_queue(conn, [{"name": "w"} for _ in range(3)])
    jobs = [pgqueue.get_job(conn, job_id) for job_id in ids]
    supervisor, sends = counting_supervisor(dsn)

    def wait_queued(count: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while len(supervisor._queued) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    threads = [
        threading.Thread(target=supervisor.start_claim, args=([job], token))
        for job, token in zip(jobs[1:], (102, 103), strict=True)
    ]
    try:
        with psycopg.connect(dsn) as blocker:
            # The first start's statement is sent and waits for the table: unanswered.
            blocker.execute("LOCK TABLE pgqueue.job_starts IN EXCLUSIVE MODE")
            supervisor.start_claim([jobs[0]], 101)
            for count, thread in enumerate(threads, start=1):
                thread.start()
                wait_queued(count)
        for thread in threads:
            thread.join(DEADLINE)
        assert sends == [1, 2]
        supervisor._call(q.FORGET_STARTS, [b"{}", b"0"])  # waits for the replies
        rows = conn.execute(
            "SELECT token, xmin::text FROM pgqueue.job_starts ORDER BY token"
        ).fetchall()
        assert [token for token, _ in rows] == [101, 102, 103]
        assert rows[1][1] == rows[2][1] != rows[0][1]
    finally:
        for token in (101, 102, 103):
            supervisor.end_claim(token)
        supervisor.stop()
