"""pgbouncer in transaction-pooling mode in front of the test server.

Enqueue (one job and COPY) and workers go through it; LISTEN takes a direct
DSN or is turned off (the worker then polls and says so); psycopg's automatic
prepared statements, which pgbouncer 1.18 cannot keep, break when left on
and are off with ``prepare=False``; migrate refuses a connection that hops
between server sessions. pgbouncer runs with ``server_round_robin = 1``, so
consecutive transactions of one client land on different server sessions
whenever it has several: the harshest form of transaction pooling.

Needs the ``pgbouncer`` binary (Debian's package; CI installs it). As root
it runs as the owner of the server's socket directory (pgbouncer refuses root).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool
from worker_helpers import create_results_table, listening, result_ids, running, scalar, wait_until

import pgqueue
from pgqueue._run_dir import WorkerSlot
from pgqueue.cli import build_parser
from pgqueue.migrate import schema_version
from pgqueue.runner import _child_command, _child_env

PGBOUNCER = shutil.which("pgbouncer") or next(
    (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)),
    None,
)

if PGBOUNCER is None and os.environ.get("PGQUEUE_TEST_REQUIRE_PGBOUNCER"):
    # CI sets this: there a missing binary is a failure, not a skip.
    raise RuntimeError("PGQUEUE_TEST_REQUIRE_PGBOUNCER is set but pgbouncer is not installed")

pytestmark = pytest.mark.skipif(
    PGBOUNCER is None,
    reason="pgbouncer is not installed (apt-get install -y pgbouncer; CI installs it)",
)

#: No server-side prepared statements: what connections through pgbouncer 1.18 need.
NO_PREPARE: dict[str, Any] = {"prepare_threshold": None}


@dataclass(frozen=True)
class Bouncer:
    """A running pgbouncer: ``via(dsn)`` is ``dsn`` through it (same database, user, password)."""

    port: int
    log: Path

    def via(self, dsn: str) -> str:
        return make_conninfo(dsn, host="127.0.0.1", port=self.port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as(host: str) -> str | None:
    """pgbouncer refuses to run as root: then run it as the owner of the socket directory."""
    if os.geteuid() != 0:
        return None
    if host.startswith("/") and Path(host).is_dir():
        owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name
        if owner != "root":
            return owner
    return "nobody"


@contextlib.contextmanager
def run_pgbouncer(host: str, port: int, user: str, password: str | None) -> Iterator[Bouncer]:
    """Start pgbouncer (pool_mode=transaction, auth_type=trust) on a free loopback port in
    front of ``host:port``; every database name maps to the same name on the server."""
    assert PGBOUNCER is not None
    # Outside pytest's temp root, which is private to root.
    workdir = Path(tempfile.mkdtemp(prefix="pgqueue-pgbouncer-"))
    users = workdir / "users.txt"
    users.write_text(
        '"{}" "{}"\n'.format(user.replace('"', '""'), (password or "").replace('"', '""'))
    )
    ini, log = workdir / "pgbouncer.ini", workdir / "pgbouncer.log"
    listen_port = _free_port()
    ini.write_text(
        f"[databases]\n* = host={host} port={port}\n\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen_port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\n"
        "pool_mode = transaction\nserver_round_robin = 1\n"
        "max_client_conn = 500\ndefault_pool_size = 40\n"
        f"logfile = {log}\nlog_connections = 0\nlog_disconnections = 0\n"
    )
    run_as = _run_as(host)
    if run_as is not None:
        uid = pwd.getpwnam(run_as).pw_uid
        for path in (workdir, users, ini):
            os.chown(path, uid, -1)
    command = [PGBOUNCER, *(["-u", run_as] if run_as else []), str(ini)]
    with (workdir / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"pgbouncer exited with {proc.returncode}: "
                    + (workdir / "stderr.txt").read_text(errors="replace")
                    + (log.read_text(errors="replace") if log.exists() else "")
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", listen_port), 1),
            ):
                break
            if time.monotonic() > deadline:
                pytest.fail("pgbouncer did not listen within 15 s")
            time.sleep(0.05)
        yield Bouncer(listen_port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def bouncer(pg_server: Any) -> Iterator[Bouncer]:
    with run_pgbouncer(pg_server.host, pg_server.port, pg_server.user, pg_server.password) as b:
        yield b


@pytest.fixture
def via(bouncer: Bouncer, dsn: str) -> str:
    """The test database's DSN through pgbouncer."""
    return bouncer.via(dsn)


def _spread_over_sessions(dsn: str, sessions: int = 3) -> None:
    """Make pgbouncer open ``sessions`` server connections (concurrent transactions), so that
    with round robin one client's consecutive transactions each land on another one."""
    conns = [psycopg.connect(dsn, **NO_PREPARE) for _ in range(sessions)]
    try:
        pids = {scalar(conn, "SELECT pg_backend_pid()") for conn in conns}
        assert len(pids) == sessions, "pgbouncer did not open one server session per transaction"
        for conn in conns:
            conn.commit()  # a client that leaves mid-transaction takes its server session along
    finally:
        for conn in conns:
            conn.close()


def _backend_pids(dsn: str, count: int) -> set[int]:
    with psycopg.connect(dsn, autocommit=True, **NO_PREPARE) as conn:
        return {scalar(conn, "SELECT pg_backend_pid()") for _ in range(count)}


# -- enqueue ----------------------------------------------------------------------


def test_transactions_through_the_bouncer_hop_between_server_sessions(via):
    _spread_over_sessions(via)
    assert len(_backend_pids(via, 6)) >= 2


def test_enqueue_through_pgbouncer_one_job_at_a_time_and_in_bulk(via, conn):
    _spread_over_sessions(via)
    with psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
        # Well past psycopg's default prepare_threshold (5).
        single = [pgqueue.add_job_to_queue(pgb, name="one", data={"i": i}) for i in range(50)]
        # COPY: ids reserved in one transaction, rows written in another (autocommit).
        bulk = pgqueue.add_jobs_to_queue(
            pgb, ({"name": "bulk", "data": {"i": i}} for i in range(2000))
        )
        job = pgqueue.get_job(pgb, bulk[-1])
        assert job is not None
        assert (job.data, job.status) == ({"i": 1999}, "pending")
        assert pgqueue.pending_queue_size(pgb)["pending_count"] == 2050
    # And in one transaction, the way an application enqueues with its own writes.
    with psycopg.connect(via, **NO_PREPARE) as pgb, pgb.transaction():
        in_tx = pgqueue.add_jobs_to_queue(pgb, [{"name": "tx"}] * 100)
        in_tx.append(pgqueue.add_job_to_queue(pgb, name="tx"))
    assert len(set(single + bulk + in_tx)) == 2151
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 2151
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE name = 'bulk'") == 2000


def test_enqueue_through_pgbouncer_from_a_pool(via, conn):
    with ConnectionPool(via, min_size=2, max_size=4, kwargs=NO_PREPARE, open=True) as pool:
        ids = [pgqueue.add_job_to_queue(pool, name="pooled") for _ in range(30)]
        ids += pgqueue.add_jobs_to_queue(pool, [{"name": "pooled"}] * 30)
        assert all(pgqueue.get_job(pool, job_id) is not None for job_id in ids)
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE name = 'pooled'") == 60


def test_automatic_prepared_statements_break_through_pgbouncer(via):
    # Why prepare_threshold=None: psycopg prepares a statement on the server
    # session it happens to be on; the next transaction runs on another one.
    _spread_over_sessions(via)
    errors = []
    with psycopg.connect(via, autocommit=True) as pgb:  # psycopg's default: prepare after 5
        for _ in range(20):
            try:
                pgqueue.add_job_to_queue(pgb, name="prepared")
            except psycopg.Error as exc:
                errors.append(str(exc))
    assert errors
    assert all("prepared statement" in error for error in errors)


# -- workers ----------------------------------------------------------------------


def _recording_handler(conn: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
    conn.execute("INSERT INTO results (job_id, note) VALUES (%s, %s)", (job.id, job.name))


def test_a_worker_through_pgbouncer_with_a_direct_listen_dsn_wakes_on_notify(via, dsn, conn):
    create_results_table(conn)
    poll_interval = 30.0  # only a NOTIFY wakes it within the test's deadlines
    started: dict[int, float] = {}
    ran = threading.Event()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        _recording_handler(c, job)
        started[job.id] = time.monotonic()
        ran.set()

    worker = pgqueue.JobQueueWorker(
        via,
        handler=handler,
        poll_interval=poll_interval,
        parallel_count=2,
        listen_dsn=dsn,
        prepare=False,
    )
    latencies = []
    with running(worker), psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
        wait_until(lambda: listening(conn), what="the worker to LISTEN")
        for _ in range(10):
            ran.clear()
            before = time.monotonic()
            job_id = pgqueue.add_job_to_queue(pgb, name="ping")  # through pgbouncer
            assert ran.wait(poll_interval / 3), "the NOTIFY did not wake the worker"
            latencies.append(started[job_id] - before)
        wait_until(lambda: len(result_ids(conn)) == 10, what="10 results")
        wait_until(
            lambda: (
                scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'completed'") == 10
            ),
            what="10 completed jobs",
        )
    latencies.sort()
    print(
        f"\nNOTIFY wake-up through pgbouncer (LISTEN on a direct DSN): median"
        f" {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert latencies[len(latencies) // 2] < 1.0
    assert latencies[-1] < poll_interval / 3


def test_a_worker_through_pgbouncer_without_listen_polls_and_says_so(via, conn, caplog):
    create_results_table(conn)
    caplog.set_level(logging.INFO, logger="pgqueue")
    worker = pgqueue.JobQueueWorker(
        via, handler=_recording_handler, poll_interval=0.2, listen=False, prepare=False
    )
    with running(worker), psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
        ids = [pgqueue.add_job_to_queue(pgb, name="polled") for _ in range(5)]
        wait_until(lambda: result_ids(conn) == sorted(ids), what="the polled jobs")
        assert not listening(conn)
    lines = [r.getMessage() for r in caplog.records if "LISTEN is off" in r.getMessage()]
    assert lines == ["LISTEN is off (listen=False): polling for due jobs every 0.2 s"]


def _drain_through(
    via: str,
    conn: psycopg.Connection[Any],
    jobs: int,
    *,
    prepare: bool,
    slots: int = 4,
    batch_size: int = 1,
) -> pgqueue.JobQueueWorker:
    _spread_over_sessions(via)
    with psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
        pgqueue.add_jobs_to_queue(pgb, [{"name": "many", "max_attempts": 1}] * jobs)
    return pgqueue.JobQueueWorker(
        via,
        handler=_recording_handler,
        poll_interval=0.2,
        parallel_count=slots,
        listen=False,
        prepare=prepare,
        batch_size=batch_size,
    )


@pytest.mark.slow
def test_thousands_of_jobs_with_several_slots_through_pgbouncer(via, conn, caplog):
    create_results_table(conn)
    caplog.set_level(logging.WARNING, logger="pgqueue")
    worker = _drain_through(via, conn, 3000, prepare=False)
    started = time.monotonic()
    stats = worker.work_off()
    elapsed = time.monotonic() - started
    print(f"\n3000 jobs, 4 slots, through pgbouncer: {3000 / elapsed:.0f} jobs/s")
    assert stats.completed == 3000
    assert len(result_ids(conn)) == 3000  # each job's write exactly once (primary key)
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE status <> 'completed'") == 0
    assert [r.getMessage() for r in caplog.records] == []


def test_a_worker_with_prepared_statements_left_on_breaks_through_pgbouncer(via, conn, caplog):
    # The proof that prepare=False is needed: the same work with psycopg's default. In waves: a
    # slot that keeps finding jobs keeps its server session (each COMMIT goes with the next
    # claim's BEGIN, before pgbouncer sees the transaction end); between waves it hops.
    create_results_table(conn)
    caplog.set_level(logging.WARNING, logger="pgqueue")
    worker = _drain_through(via, conn, 20, prepare=True)

    def broke() -> bool:
        failed = scalar(
            conn,
            "SELECT count(*) FROM pgqueue.jobs WHERE last_error LIKE '%prepared statement \"_pg3_%'",
        )
        logged = any('prepared statement "_pg3_' in _with_traceback(r) for r in caplog.records)
        return bool(failed or logged)

    def next_wave() -> bool:
        if not broke() and not scalar(
            conn, "SELECT count(*) FROM pgqueue.jobs WHERE status = 'pending'"
        ):
            with psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
                pgqueue.add_jobs_to_queue(pgb, [{"name": "many", "max_attempts": 1}] * 20)
        return broke()

    with running(worker):
        wait_until(next_wave, what="an error about a prepared statement")


def _with_traceback(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        text += f" {record.exc_info[1]!r}"
    return text


def test_a_jobs_transaction_still_holds_through_pgbouncer(via, conn):
    create_results_table(conn)

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        _recording_handler(c, job)
        if job.name == "bad":
            raise RuntimeError("boom after the write")

    _spread_over_sessions(via)
    with psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
        good = [pgqueue.add_job_to_queue(pgb, name="good") for _ in range(20)]
        bad = [pgqueue.add_job_to_queue(pgb, name="bad", max_attempts=1) for _ in range(20)]
    worker = pgqueue.JobQueueWorker(
        via, handler=handler, parallel_count=3, listen=False, prepare=False, batch_size=1
    )
    stats = worker.work_off()
    assert (stats.completed, stats.failed) == (20, 20)
    assert result_ids(conn) == sorted(good)  # the failed handlers' writes were rolled back
    rows = conn.execute(
        "SELECT status, attempts, last_error FROM pgqueue.jobs WHERE id = ANY (%s)", (bad,)
    ).fetchall()
    assert {(r[0], r[1]) for r in rows} == {("failed", 1)}
    assert all("boom after the write" in r[2] for r in rows)


def test_a_hung_handler_times_out_through_pgbouncer(via, conn):
    # The watchdog ends the job's transaction by terminating its server session
    # (pg_backend_pid() inside the transaction is the one pgbouncer lent).
    create_results_table(conn)

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        if job.name == "hang":
            c.execute("SELECT pg_sleep(60)")
        _recording_handler(c, job)

    _spread_over_sessions(via)
    with psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
        hung = pgqueue.add_job_to_queue(pgb, name="hang", max_attempts=1, timeout=1)
    worker = pgqueue.JobQueueWorker(
        via, handler=handler, parallel_count=2, poll_interval=0.2, listen=False, prepare=False
    )
    with running(worker), psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
        wait_until(
            lambda: (
                scalar(conn, "SELECT status FROM pgqueue.jobs WHERE id = %s", (hung,)) == "failed"
            ),
            what="the hung job to time out",
        )
        ids = [pgqueue.add_job_to_queue(pgb, name="after") for _ in range(20)]
        wait_until(lambda: result_ids(conn) == ids, what="the jobs after the time-out")
    assert "timed out" in scalar(conn, "SELECT last_error FROM pgqueue.jobs WHERE id = %s", (hung,))


def test_lease_mode_through_pgbouncer(via, conn):
    create_results_table(conn)

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        _recording_handler(c, job)  # autocommit in lease mode: commits at once

    _spread_over_sessions(via)
    with psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
        ids = pgqueue.add_jobs_to_queue(pgb, [{"name": "long"}] * 30)
    worker = pgqueue.JobQueueWorker(
        via, handler=handler, parallel_count=3, lease=5, listen=False, prepare=False
    )
    assert worker.work_off().completed == 30
    assert result_ids(conn) == ids
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE status <> 'completed'") == 0


def test_batch_mode_through_pgbouncer(via, conn):
    create_results_table(conn)
    worker = _drain_through(via, conn, 500, prepare=False, slots=2, batch_size=20)
    assert worker.work_off().completed == 500
    assert len(result_ids(conn)) == 500


def test_prepare_false_with_a_pool_needs_the_pool_configured(via):
    pool = ConnectionPool(via, open=False)
    with pytest.raises(pgqueue.ConfigurationError, match="prepare_threshold"):
        pgqueue.JobQueueWorker(pool, handler=_recording_handler, prepare=False)
    with pytest.raises(pgqueue.ConfigurationError, match="listen=False"):
        pgqueue.JobQueueWorker(via, handler=_recording_handler, listen=False, listen_dsn=via)


def test_a_worker_on_a_configured_pool_through_pgbouncer(via, dsn, conn):
    create_results_table(conn)
    kwargs = {"autocommit": True, **NO_PREPARE}
    with ConnectionPool(via, min_size=3, max_size=3, kwargs=kwargs, open=True) as pool:
        pgqueue.add_jobs_to_queue(pool, [{"name": "pool"}] * 200)
        worker = pgqueue.JobQueueWorker(
            pool, handler=_recording_handler, parallel_count=3, listen_dsn=dsn, prepare=False
        )
        with running(worker):
            wait_until(lambda: len(result_ids(conn)) == 200, what="200 results")


# -- migrate ----------------------------------------------------------------------


def test_migrate_through_transaction_pooling_is_refused_and_leaves_no_lock(bouncer, empty_dsn):
    via = bouncer.via(empty_dsn)
    _spread_over_sessions(via)
    with (
        psycopg.connect(via, **NO_PREPARE) as pgb,
        pytest.raises(pgqueue.ConfigurationError, match="direct DSN"),
    ):
        pgqueue.migrate(pgb)
    with psycopg.connect(empty_dsn, autocommit=True) as direct:
        assert schema_version(direct) is None  # refused before the first step
        # The lock taken on a pooled server session was freed: a direct migrate does not wait.
        direct.execute("SET lock_timeout = '5s'")
        assert pgqueue.migrate(direct) != []


# -- the command line ------------------------------------------------------------------

_APP = """
def handler(conn, job):
    conn.execute("INSERT INTO results (job_id, note) VALUES (%s, %s)", (job.id, job.name))
"""


def test_pgqueue_work_through_pgbouncer_with_listen_dsn_and_no_prepare(via, dsn, conn, tmp_path):
    create_results_table(conn)
    (tmp_path / "bouncer_app.py").write_text(_APP)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PGQUEUE_") and key != "DATABASE_URL"
    }
    env |= {"PGQUEUE_LISTEN_DSN": dsn, "PYTHONPATH": str(tmp_path)}
    err = tmp_path / "stderr.txt"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgqueue",
                "work",
                "--app",
                "bouncer_app:handler",
                "--dsn",
                via,
                "--no-prepare",
                "--concurrency",
                "3",
                "--poll-interval",
                "30",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    try:
        wait_until(lambda: listening(conn), what="the worker to LISTEN on the direct DSN")
        with psycopg.connect(via, autocommit=True, **NO_PREPARE) as pgb:
            ids = pgqueue.add_jobs_to_queue(pgb, [{"name": "cli"}] * 300)
        # Woken by the NOTIFY (polling would wait 30 s); well past 5 runs per statement.
        wait_until(lambda: result_ids(conn) == ids, timeout=20, what="the CLI worker's jobs")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    log = err.read_text(errors="replace")
    assert "worker stopped cleanly" in log
    assert "prepared statement" not in log
    assert "Traceback" not in log


def test_the_pgbouncer_options_come_from_the_environment_and_reach_detached_workers(monkeypatch):
    monkeypatch.setenv("PGQUEUE_NO_PREPARE", "1")
    monkeypatch.setenv("PGQUEUE_LISTEN_DSN", "host=direct dbname=app")
    args = build_parser().parse_args(["work", "--app", "m:h"])
    assert (args.no_prepare, args.listen_dsn, bool(args.no_listen)) == (
        True,
        "host=direct dbname=app",
        False,
    )
    args = build_parser().parse_args(["start", "--app", "m:h", "--dsn", "host=bouncer"])
    command = _child_command(args, WorkerSlot(None, 0), Path("w.pid"))
    assert "--no-prepare" in command
    assert "--no-listen" not in command
    assert "host=direct" not in " ".join(command)  # a DSN goes by the environment, not argv
    assert _child_env(args)["PGQUEUE_LISTEN_DSN"] == "host=direct dbname=app"
    monkeypatch.setenv("PGQUEUE_QUEUE", "email")
    monkeypatch.setenv("PGQUEUE_MAX_PAYLOAD_BYTES", "4096")
    env = _child_env(args)
    assert "PGQUEUE_QUEUE" not in env  # on the command line or not at all
    assert env["PGQUEUE_MAX_PAYLOAD_BYTES"] == "4096"  # no option: the handlers' enqueues need it
    monkeypatch.delenv("PGQUEUE_NO_PREPARE")
    args = build_parser().parse_args(["workoff", "--app", "m:h", "--no-prepare"])
    assert args.no_prepare is True
