"""A worker process killed with SIGKILL mid-job loses nothing: the job runs again, once, after its retry delay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from worker_helpers import Calls, create_results_table, result_ids, running, status, wait_until

import pgqueue

WORKER_SCRIPT = textwrap.dedent(
    """
    import pathlib
    import sys
    import time

    import pgqueue

    dsn, marker = sys.argv[1], pathlib.Path(sys.argv[2])


    def handler(conn, job):
        conn.execute("INSERT INTO results (job_id, note) VALUES (%s, 'killed')", (job.id,))
        # Written whole, then renamed: the test polls for the file and reads it.
        marker.with_suffix('.tmp').write_text(str(job.id))
        marker.with_suffix('.tmp').replace(marker)
        time.sleep(600)  # Blocks in Python, not in the server: the kill finds it here.


    worker = pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1)
    worker.start()
    time.sleep(600)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_worker_killed_mid_job_loses_nothing(conn, dsn, tmp_path):
    create_results_table(conn)
    victim = pgqueue.add_job_to_queue(
        conn, name="crash", priority=0, retry={"backoff": "fixed", "delay": 0.5, "jitter": 0}
    )
    bystander = pgqueue.add_job_to_queue(conn, name="crash", priority=1)
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    marker = tmp_path / "running"

    proc = subprocess.Popen([sys.executable, str(script), dsn, str(marker)])
    try:
        wait_until(marker.exists, what="the subprocess to start the job")
        assert marker.read_text() == str(victim)
        wait_until(lambda: status(conn, victim) == "running", what="the job to show as running")

        calls = Calls()

        def handler(c, job):
            calls.add(job.id)
            c.execute("INSERT INTO results (job_id, note) VALUES (%s, 'survivor')", (job.id,))

        with running(pgqueue.JobQueueWorker(dsn, handler=handler, poll_interval=0.1)):
            # The victim comes first in queue order, but it is locked: we get the other one.
            assert calls.wait_for(1) == [bystander]
            wait_until(lambda: status(conn, bystander) == "completed", what="the bystander")
            assert status(conn, victim) == "running"
            assert pgqueue.pending_queue_size(conn)["running_count"] == 1

            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL

            # Postgres rolled the dead worker's transaction back, but the start of
            # the attempt was recorded outside it: our worker's next dequeue counts
            # a crashed attempt, and runs the job after its retry delay (by
            # polling: a rollback sends no NOTIFY).
            assert calls.wait_for(2) == [bystander, victim]
            wait_until(lambda: status(conn, victim) == "completed", what="the victim to complete")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    assert calls.items == [bystander, victim]
    assert conn.execute("SELECT job_id, note FROM results ORDER BY job_id").fetchall() == [
        (victim, "survivor"),
        (bystander, "survivor"),
    ]
    assert result_ids(conn) == sorted([victim, bystander])
    job = pgqueue.get_job(conn, victim)
    assert job is not None
    assert job.status is pgqueue.JobStatus.COMPLETED
    assert job.attempts == 2
    assert job.last_error is not None
    assert "the worker running this job died (crashed attempt 1 of 5)" in job.last_error
    assert pgqueue.pending_queue_size(conn) == {
        "pending_count": 0,
        "scheduled_count": 0,
        "running_count": 0,
    }


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_after_a_kill_the_job_is_pending_not_running(conn, dsn, tmp_path):
    create_results_table(conn)
    job_id = pgqueue.add_job_to_queue(conn, name="crash")
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    marker = tmp_path / "running"

    proc = subprocess.Popen([sys.executable, str(script), dsn, str(marker)])
    try:
        wait_until(marker.exists, what="the subprocess to start the job")
        wait_until(lambda: status(conn, job_id) == "running", what="the job to show as running")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    wait_until(lambda: status(conn, job_id) == "pending", what="the job to be pending again")
    assert result_ids(conn) == []
    assert pgqueue.pending_queue_size(conn) == {
        "pending_count": 1,
        "scheduled_count": 0,
        "running_count": 0,
    }
