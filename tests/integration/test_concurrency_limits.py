"""A queue's max_concurrency is global: several worker processes together never run more of its
jobs at once than the limit, reach it, free a crashed process's slot, and leave other queues alone."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from worker_helpers import db_now, running, scalar, status, wait_until

import pgqueue
from pgqueue import _queries, _wire

# Each handler call records its run in `runs`: the start through a connection of its own
# (committed at once, so a test sees which jobs run right now), the end inside the job's
# transaction. Both stamps come from the database clock, shared by every process, and the
# recorded interval lies inside the time the job held its slot.
WORKER_SCRIPT = textwrap.dedent(
    """
    import os
    import pathlib
    import sys
    import threading
    import time

    import psycopg

    import pgqueue

    dsn, ready = sys.argv[1], pathlib.Path(sys.argv[2])
    local = threading.local()


    def side_connection():
        if getattr(local, "conn", None) is None:
            local.conn = psycopg.connect(dsn, autocommit=True)
        return local.conn


    def handler(conn, job):
        run_id = side_connection().execute(
            "INSERT INTO runs (job_id, queue, pid, started)"
            " VALUES (%s, %s, %s, clock_timestamp()) RETURNING id",
            (job.id, job.queue, os.getpid()),
        ).fetchone()[0]
        time.sleep(job.data["sleep"])
        conn.execute("UPDATE runs SET ended = clock_timestamp() WHERE id = %s", (run_id,))


    # Polls often: a slot that just finished a limited job claims the freed slot at once, and
    # the other processes must get their turns too (a poll is their only chance at a full queue).
    worker = pgqueue.JobQueueWorker(dsn, handler=handler, parallel_count=4, poll_interval=0.02)
    worker.start()
    # Written whole, then renamed: the test polls for the file and reads it.
    ready.with_suffix('.tmp').write_text(str(os.getpid()))
    ready.with_suffix('.tmp').replace(ready)
    time.sleep(600)
    """
)


def _create_runs_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE runs (id bigserial PRIMARY KEY, job_id bigint NOT NULL, queue text NOT NULL,"
        " pid integer NOT NULL, started timestamptz NOT NULL, ended timestamptz)"
    )


def max_overlap(intervals: Iterable[tuple[Any, Any]]) -> int:
    """The largest number of intervals open at one instant (one ending as another starts: 1)."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda event: (event[0], event[1]),
    )
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def _runs(
    conn: psycopg.Connection[Any], queue: str, *, after: datetime | None = None
) -> list[tuple[datetime, datetime | None, int, int]]:
    return conn.execute(
        "SELECT started, ended, pid, job_id FROM runs"
        " WHERE queue = %s AND (%s::timestamptz IS NULL OR started > %s) ORDER BY started",
        (queue, after, after),
    ).fetchall()


def _finished(runs: list[tuple[datetime, datetime | None, int, int]]) -> list[tuple[Any, Any]]:
    return [(start, end) for start, end, _, _ in runs if end is not None]


def _count(conn: psycopg.Connection[Any], queue: str, state: str) -> int:
    return int(
        scalar(
            conn,
            "SELECT count(*) FROM pgqueue.jobs WHERE queue = %s AND status = %s",
            (queue, state),
        )
    )


@pytest.fixture
def worker_processes(dsn: str, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three worker processes of four slots each, started and ready."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(3):
            ready = tmp_path / f"ready-{n}"
            procs.append(subprocess.Popen([sys.executable, str(script), dsn, str(ready)]))
        for n in range(3):
            path = tmp_path / f"ready-{n}"
            wait_until(path.exists, timeout=60, what=f"worker process {n} to start")
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_max_concurrency_holds_across_worker_processes_and_survives_a_crash(
    conn: psycopg.Connection[Any], worker_processes: list[subprocess.Popen[bytes]]
) -> None:
    _create_runs_table(conn)
    pgqueue.configure_queue(conn, "limited", max_concurrency=2)
    # Interleaved, same priority: the free queue's jobs wait behind no limited one.
    jobs = []
    for i in range(40):
        jobs.append({"queue": "limited", "name": "limited", "data": {"sleep": 0.2, "i": i}})
        if i % 2 == 0:
            jobs.append({"queue": "free", "name": "free", "data": {"sleep": 0.2, "i": i}})
    pgqueue.add_jobs_to_queue(conn, jobs)

    wait_until(
        lambda: (
            _count(conn, "limited", "completed") == 40 and _count(conn, "free", "completed") == 20
        ),
        timeout=60,
        what="all 60 jobs to complete",
    )
    limited = _runs(conn, "limited")
    assert len(limited) == 40, "each limited job ran exactly once"
    assert max_overlap(_finished(limited)) == 2, "the limit is respected and reached"
    assert len({pid for _, _, pid, _ in limited}) >= 2, "more than one process ran limited jobs"
    free = _runs(conn, "free")
    assert len(free) == 20
    assert max_overlap(_finished(free)) > 2, "the limit of one queue throttles no other"

    # A process dies holding a slot: its slot is freed with its transaction.
    start = db_now(conn)
    pgqueue.add_jobs_to_queue(
        conn,
        [
            {"queue": "limited", "name": "limited", "data": {"sleep": 0.4, "i": i}}
            for i in range(10)
        ],
    )

    def two_running() -> list[tuple[datetime, datetime | None, int, int]] | None:
        rows = [r for r in _runs(conn, "limited", after=start) if r[1] is None]
        return rows if len(rows) == 2 else None

    holders = wait_until(two_running, what="two limited jobs to run")
    assert holders is not None
    victim_pid = holders[0][2]
    [victim] = [proc for proc in worker_processes if proc.pid == victim_pid]
    killed_at = db_now(conn)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL

    wait_until(
        lambda: _count(conn, "limited", "completed") == 50,
        timeout=60,
        what="the other processes to finish every limited job, the killed ones included",
    )
    after_crash = _runs(conn, "limited", after=killed_at)
    assert victim_pid not in {pid for _, _, pid, _ in after_crash}
    assert max_overlap(_finished(after_crash)) == 2, "both slots are used again after the crash"
    # Over the whole test, a killed run counts as running until the kill.
    every_run = [(s, e if e is not None else killed_at) for s, e, _, _ in _runs(conn, "limited")]
    assert max_overlap(every_run) <= 2
    killed_jobs = {job for _, end, _, job in _runs(conn, "limited") if end is None}
    assert killed_jobs, "the victim was running a limited job"
    assert {job for _, _, _, job in after_crash} >= killed_jobs, "the killed jobs ran again"


class _Recorder:
    """Handler runs as (start, end) pairs on one process's monotonic clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: dict[int, list[float]] = {}

    def start(self, job_id: int) -> None:
        with self._lock:
            self.runs[job_id] = [time.monotonic()]

    def end(self, job_id: int) -> None:
        with self._lock:
            self.runs[job_id].append(time.monotonic())

    def open_count(self, ids: Iterable[int] | None = None) -> int:
        with self._lock:
            wanted = self.runs if ids is None else ids
            return sum(1 for i in wanted if len(self.runs.get(i, [0.0, 0.0])) == 1)

    def intervals(self, ids: Iterable[int]) -> list[tuple[float, float]]:
        with self._lock:
            return [(self.runs[i][0], self.runs[i][1]) for i in ids]


def test_changing_max_concurrency_applies_to_new_claims_and_none_removes_the_limit(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    pgqueue.configure_queue(conn, "limited", max_concurrency=2)
    release = threading.Event()
    recorder = _Recorder()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        recorder.start(job.id)
        if job.data.get("block"):
            assert release.wait(30)
        else:
            time.sleep(job.data["sleep"])
        recorder.end(job.id)

    blockers = [
        pgqueue.add_job_to_queue(conn, queue="limited", priority=0, data={"block": True})
        for _ in range(2)
    ]
    normal = pgqueue.add_jobs_to_queue(
        conn, [{"queue": "limited", "priority": 1, "data": {"sleep": 0.1}} for _ in range(8)]
    )
    worker = pgqueue.JobQueueWorker(dsn, handler=handler, parallel_count=4, poll_interval=0.05)
    with running(worker):
        wait_until(lambda: recorder.open_count(blockers) == 2, what="both blockers to run")
        # Both slots are held: the two idle worker slots find the queue full.
        time.sleep(0.3)
        assert recorder.open_count() == 2
        assert pgqueue.pending_queue_size(conn, queues=["limited"])["running_count"] == 2

        # Every claim from here on sees the new limit: none can succeed while both are held.
        pgqueue.configure_queue(conn, "limited", max_concurrency=1)
        release.set()
        wait_until(
            lambda: _count(conn, "limited", "completed") == 10, what="the limited jobs to finish"
        )
        assert max_overlap(recorder.intervals(normal)) == 1

        pgqueue.configure_queue(conn, "limited", max_concurrency=None)
        unlimited = pgqueue.add_jobs_to_queue(
            conn, [{"queue": "limited", "data": {"sleep": 0.3}} for _ in range(8)]
        )
        wait_until(lambda: _count(conn, "limited", "completed") == 18, what="the unlimited jobs")
    assert max_overlap(recorder.intervals(unlimited)) >= 3, "without a limit all slots are used"
    assert scalar(conn, "SELECT max_concurrency FROM pgqueue.queues WHERE name = 'limited'") is None


def test_a_lowered_limit_counts_the_jobs_holding_slots_past_it(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    # Slots are numbered below the limit: jobs that took slots 2 and 3 under a limit of 4 held
    # nothing a limit of 2 looked at, and two more jobs started beside them.
    pgqueue.configure_queue(conn, "limited", max_concurrency=4)
    recorder = _Recorder()
    releases: dict[int, threading.Event] = {}

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        recorder.start(job.id)
        if job.id in releases:
            assert releases[job.id].wait(30)
        else:
            time.sleep(0.05)
        recorder.end(job.id)

    blockers = [pgqueue.add_job_to_queue(conn, queue="limited", priority=0) for _ in range(4)]
    releases.update({job_id: threading.Event() for job_id in blockers})
    worker = pgqueue.JobQueueWorker(dsn, handler=handler, parallel_count=6, poll_interval=0.05)
    with running(worker):
        wait_until(lambda: recorder.open_count(blockers) == 4, what="the four to run")
        first, second, *rest = sorted(blockers, key=lambda job_id: recorder.runs[job_id][0])
        releases[first].set()  # the first two claimed hold the lowest slots
        releases[second].set()
        wait_until(lambda: _count(conn, "limited", "completed") == 2, what="two to finish")
        pgqueue.configure_queue(conn, "limited", max_concurrency=2)
        later = pgqueue.add_jobs_to_queue(conn, [{"queue": "limited"} for _ in range(3)])
        time.sleep(0.5)  # ten polls: none of them may start while the two run
        assert recorder.open_count(later) == 0
        assert all(job_id not in recorder.runs for job_id in later)
        for job_id in rest:
            releases[job_id].set()
        wait_until(lambda: _count(conn, "limited", "completed") == 7, what="the rest to finish")
    assert max_overlap(recorder.intervals([*rest, *later])) <= 2


@pytest.mark.parametrize("lease", [None, 60.0], ids=["transactional", "lease"])
def test_claims_racing_for_a_full_queue_leave_no_job_waiting_for_a_poll(
    conn: psycopg.Connection[Any], dsn: str, lease: float | None
) -> None:
    # Two claims meet on the queue's one slot. One takes the slot again, then finds its job gone
    # (the other's check held it for an instant) or the queue over its limit (a lease-mode job
    # still running, which ended a moment later); the other found the slot held and ended empty.
    # Both slots then slept until the next poll (a minute here) with jobs due: about one round
    # in fifteen did (lease mode: one in a hundred or two) before such a claim let its slot go
    # with a NOTIFY for the queue.
    pgqueue.configure_queue(conn, "limited", max_concurrency=1)
    done: list[int] = []
    lock = threading.Lock()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        c.execute("SELECT 1")
        with lock:
            done.append(job.id)

    worker = pgqueue.JobQueueWorker(
        dsn, handler=handler, parallel_count=2, poll_interval=60, lease=lease
    )
    with running(worker):
        for round_ in range(60):
            ids = set(pgqueue.add_jobs_to_queue(conn, [{"queue": "limited"}] * 5))
            wait_until(
                functools.partial(ids.issubset, done),
                timeout=10,
                what=f"round {round_}'s jobs (a stall waits for the minute's poll)",
            )


def test_a_claim_that_finds_its_queue_over_the_limit_lets_the_slot_go_at_once(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    # A lease-mode job runs (it holds no slot); a claim finds the queue over its limit after
    # taking the slot again. Holding that slot to the end of its transaction refused every
    # other claim meanwhile, even the one of the worker whose job had just ended.
    pgqueue.configure_queue(conn, "limited", max_concurrency=1)
    leased, waiting = pgqueue.add_jobs_to_queue(conn, [{"queue": "limited"}] * 2)
    with psycopg.connect(dsn) as runner:
        claimed = runner.execute("SELECT id FROM pgqueue.dequeue(1, NULL, NULL)").fetchall()
        assert claimed == [(leased,)]
        runner.execute("SELECT pgqueue.lease_jobs(%s, 3600)", ([leased],))
        runner.commit()
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn) as claimer,
        psycopg.connect(dsn) as other,
    ):
        listener.execute("LISTEN pgqueue_jobs")
        assert claimer.execute("SELECT id FROM pgqueue.dequeue(1, NULL, NULL)").fetchall() == []
        # The claimer's transaction is still open: the slot is free all the same.
        taken = other.execute("SELECT pgqueue.take_slot('limited', 1, 0)").fetchone()
        assert taken == (0,)
        other.rollback()
        claimer.commit()
        # Still full (the lease-mode job runs): no NOTIFY, or idle slots would wake each other
        # for as long as it runs.
        assert [n.payload for n in listener.notifies(timeout=0.5, stop_after=1)] == []
    assert scalar(conn, "SELECT status FROM pgqueue.jobs WHERE id = %s", (waiting,)) == "pending"


def test_a_limited_queue_with_no_pending_job_leaves_the_other_queues_the_plain_claim(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker of every queue has every limited queue in reach. Any limit sent each of its
    # claims through pgqueue.dequeue, at about half the rate, even with the limited queue empty.
    pgqueue.configure_queue(conn, "limited", max_concurrency=1)
    dequeues: list[Any] = []  # the pgqueue.dequeue calls sent after a plain claim
    run = _wire.ClaimTransaction.run

    def counted(self: Any, statements: Any) -> Any:
        dequeues.extend(s for s in statements if s.sql == _queries.DEQUEUE_WIRE)
        return run(self, statements)

    monkeypatch.setattr(_wire.ClaimTransaction, "run", counted)

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        pass

    def work_off() -> dict[str, int]:
        worker = pgqueue.JobQueueWorker(dsn, handler=handler, parallel_count=2, poll_interval=9)
        return worker.work_off().as_dict()

    plain = pgqueue.add_jobs_to_queue(conn, [{"name": "noop"}] * 4)
    assert work_off() == {"completed": 4, "retried": 0, "failed": 0}
    assert dequeues == []
    assert {status(conn, job_id) for job_id in plain} == {"completed"}

    # A pending job of the limited queue (a running one is pending too) sends the claims of
    # the workers that reach it through pgqueue.dequeue, which keeps the limit.
    limited = pgqueue.add_jobs_to_queue(conn, [{"name": "noop", "queue": "limited"}] * 2)
    other = pgqueue.add_job_to_queue(conn, name="noop")
    assert work_off() == {"completed": 3, "retried": 0, "failed": 0}
    assert dequeues
    assert {status(conn, job_id) for job_id in [*limited, other]} == {"completed"}

    # A worker that names other queues never has it in reach.
    dequeues.clear()
    pgqueue.add_job_to_queue(conn, name="noop", queue="limited")
    elsewhere = pgqueue.add_job_to_queue(conn, name="noop", queue="elsewhere")
    worker = pgqueue.JobQueueWorker(dsn, handler=handler, queues=["elsewhere"], poll_interval=9)
    assert worker.work_off().as_dict() == {"completed": 1, "retried": 0, "failed": 0}
    assert dequeues == []
    assert status(conn, elsewhere) == "completed"
