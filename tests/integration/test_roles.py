"""Least privilege: `migrate(roles=True)` makes pgqueue_producer and pgqueue_worker; login
roles in each connect and show what they may do and what is refused. And every function
is SECURITY INVOKER with a pinned search_path."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from worker_helpers import Calls, create_results_table, result_ids, running, scalar, wait_until

import pgqueue
from pgqueue.cli import main
from pgqueue.migrate import sql_dir

GROUPS = ("pgqueue_producer", "pgqueue_worker")
SAFE_SEARCH_PATH = "search_path=pg_catalog, pgqueue, pg_temp"

_counter = itertools.count()


@pytest.fixture
def make_login(pg_server: Any) -> Iterator[Callable[[str, str], str]]:
    """``make_login(group, dsn)``: a new LOGIN role in ``group``; returns ``dsn`` as that role.

    Set up before the test's database and torn down after it is dropped, so
    the group roles (per server) can go too once no database grants them anything.
    """
    made: list[str] = []

    def make(group: str, dsn: str) -> str:
        name = f"pgq_{group.removeprefix('pgqueue_')}_{os.getpid()}_{next(_counter)}"
        password = f"pw-{name}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(name), sql.Literal(password), sql.Identifier(group)
                )
            )
        made.append(name)
        return make_conninfo(dsn, user=name, password=password)

    yield make
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        for name in [*made, *GROUPS]:
            # A group may still be granted something in another database of this server.
            with contextlib.suppress(pg_errors.DependentObjectsStillExist):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def with_roles(make_login: Any, dsn: str) -> str:
    """The test database, migrated with roles=True."""
    with psycopg.connect(dsn) as conn:
        assert pgqueue.migrate(conn, roles=True) == []
    return dsn


def _user(dsn: str) -> sql.Identifier:
    return sql.Identifier(str(conninfo_to_dict(dsn)["user"]))


def _revoke_execute_from_public(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA pgqueue FROM PUBLIC")


def _privileges(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """What the two groups hold in this database: tables, columns, sequences, functions, schema."""
    return conn.execute(
        """
        SELECT r.rolname, c.relname, a.privilege_type, NULL::name
        FROM pg_class c, aclexplode(c.relacl) a, pg_roles r
        WHERE c.relnamespace = 'pgqueue'::regnamespace AND a.grantee = r.oid
          AND r.rolname IN ('pgqueue_producer', 'pgqueue_worker')
        UNION ALL
        SELECT r.rolname, c.relname, a.privilege_type, att.attname
        FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid,
             aclexplode(att.attacl) a, pg_roles r
        WHERE c.relnamespace = 'pgqueue'::regnamespace AND a.grantee = r.oid
          AND r.rolname IN ('pgqueue_producer', 'pgqueue_worker')
        UNION ALL
        SELECT r.rolname, p.oid::regprocedure::text, a.privilege_type, NULL
        FROM pg_proc p, aclexplode(p.proacl) a, pg_roles r
        WHERE p.pronamespace = 'pgqueue'::regnamespace AND a.grantee = r.oid
          AND r.rolname IN ('pgqueue_producer', 'pgqueue_worker')
        UNION ALL
        SELECT r.rolname, n.nspname, a.privilege_type, NULL
        FROM pg_namespace n, aclexplode(n.nspacl) a, pg_roles r
        WHERE n.nspname = 'pgqueue' AND a.grantee = r.oid
          AND r.rolname IN ('pgqueue_producer', 'pgqueue_worker')
        ORDER BY 1, 2, 3, 4
        """
    ).fetchall()


# -- the functions ----------------------------------------------------------------


def test_every_function_is_security_invoker_with_a_safe_search_path(conn):
    rows = conn.execute(
        "SELECT p.proname, p.prosecdef, p.proconfig FROM pg_proc p"
        " WHERE p.pronamespace = 'pgqueue'::regnamespace ORDER BY 1"
    ).fetchall()
    assert len(rows) > 20
    assert [name for name, definer, _ in rows if definer] == []
    assert [name for name, _, config in rows if SAFE_SEARCH_PATH not in (config or [])] == []


def test_a_function_in_a_schema_earlier_on_the_callers_path_is_not_called(conn):
    # What the pinned search_path is for: an unqualified call inside a function
    # (cardinality, now, ...) must not resolve to a look-alike the caller can see first.
    conn.execute("CREATE SCHEMA trap")
    conn.execute(
        "CREATE FUNCTION trap.cardinality(text[]) RETURNS integer"
        " LANGUAGE sql AS $$ SELECT 1 / 0 $$"
    )
    conn.execute("SET search_path = trap, public")
    pgqueue.add_job_to_queue(conn, name="x", queue="q")
    rows = conn.execute("SELECT id FROM pgqueue.dequeue(1, ARRAY['q'], NULL)").fetchall()
    assert len(rows) == 1


# -- migrate --------------------------------------------------------------------


def test_migrate_roles_makes_two_nologin_groups_and_is_idempotent(make_login, dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert pgqueue.migrate(conn, roles=True) == []
        first = _privileges(conn)
        assert pgqueue.migrate(conn, roles=True) == []
        assert _privileges(conn) == first
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolinherit FROM pg_roles"
            " WHERE rolname IN ('pgqueue_producer', 'pgqueue_worker') ORDER BY 1"
        ).fetchall()
        assert rows == [(group, False, False, True) for group in GROUPS]
        # A plain migrate keeps the grants in step with the schema, and drops extras.
        conn.execute("GRANT UPDATE (data) ON pgqueue.jobs TO pgqueue_producer")
        assert pgqueue.migrate(conn) == []
        assert _privileges(conn) == first
        # roles=False leaves them alone.
        conn.execute("GRANT UPDATE (data) ON pgqueue.jobs TO pgqueue_producer")
        pgqueue.migrate(conn, roles=False)
        assert ("pgqueue_producer", "jobs", "UPDATE", "data") in _privileges(conn)
    producer = {(obj, priv, col) for role, obj, priv, col in first if role == "pgqueue_producer"}
    assert ("jobs", "SELECT", None) in producer
    assert not {priv for obj, priv, col in producer if obj == "jobs"} & {"UPDATE", "DELETE"}


#: Columns of pgqueue.jobs that neither role writes (set by their defaults).
NEITHER_WRITES = {"created_at"}


def test_every_table_column_and_function_has_a_decision_in_roles_sql(with_roles, conn):
    # A new column, table or function must be placed in sql/roles.sql (granted, or
    # named as granted to neither), or the roles would silently lack what they need.
    privileges = _privileges(conn)
    producer_inserts = {
        c for r, t, p, c in privileges if (r, t, p) == ("pgqueue_producer", "jobs", "INSERT")
    }
    worker_updates = {
        c for r, t, p, c in privileges if (r, t, p) == ("pgqueue_worker", "jobs", "UPDATE")
    }
    columns = {
        row[0]
        for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'pgqueue.jobs'::regclass"
            " AND attnum > 0 AND NOT attisdropped"
        )
    }
    unplaced = columns - producer_inserts - worker_updates - NEITHER_WRITES
    assert unplaced == set(), f"place these pgqueue.jobs columns in sql/roles.sql: {unplaced}"
    assert not producer_inserts & {"status", "attempts", "result", "last_error", "completed_at"}
    assert not worker_updates & {"id", "queue", "name", "data", "priority", "retry", "schedule"}
    text = (sql_dir() / "roles.sql").read_text(encoding="utf-8")
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'pgqueue'::regnamespace"
            " AND relkind IN ('r', 'p')"
        )
    ]
    assert [t for t in tables if f"pgqueue.{t}" not in text] == []
    functions = {
        row[0]
        for row in conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'pgqueue'::regnamespace"
        )
    }
    assert sorted(f for f in functions if not re.search(rf"\b{f}\b", text)) == []


def test_roles_are_optional(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        pgqueue.migrate(conn)
        assert _privileges(conn) == []


def test_pgqueue_migrate_roles_on_the_command_line(make_login, dsn, capsys):
    assert main(["migrate", "--dsn", dsn, "--roles"]) == 0
    out = capsys.readouterr().out
    assert "pgqueue_producer and pgqueue_worker" in out
    with psycopg.connect(dsn) as conn:
        assert _privileges(conn) != []


# -- the producer -------------------------------------------------------------------


def test_the_producer_enqueues_one_and_many_and_reads_its_jobs(with_roles, make_login, conn):
    _revoke_execute_from_public(with_roles)  # the grants name every function it needs
    producer_dsn = make_login("pgqueue_producer", with_roles)
    with psycopg.connect(producer_dsn, autocommit=True) as producer:
        assert scalar(producer, "SELECT current_user") != "postgres"
        one = pgqueue.add_job_to_queue(
            producer, name="mail", data={"to": "a@example.com"}, scheduled_at=timedelta(hours=1)
        )
        many = pgqueue.add_jobs_to_queue(
            producer, [{"name": "bulk", "data": {"i": i}} for i in range(500)]
        )
        with producer.transaction():  # both paths inside an application's transaction too
            many += pgqueue.add_jobs_to_queue(producer, [{"name": "bulk"}] * 10)
            pgqueue.add_job_to_queue(producer, name="tx")
        job = pgqueue.get_job(producer, one)
        assert job is not None
        assert (job.name, job.data, job.status) == ("mail", {"to": "a@example.com"}, "pending")
        assert pgqueue.get_job(producer, many[-1]) is not None
        assert [j.id for j in pgqueue.list_jobs(producer, name="mail")] == [one]
        assert pgqueue.pending_queue_size(producer) == {
            "pending_count": 511,
            "scheduled_count": 1,
            "running_count": 0,
        }
        now = datetime.now(UTC)
        assert pgqueue.average_time_to_completion(producer, now - timedelta(days=1), now) == 0
    assert scalar(conn, "SELECT count(*) FROM pgqueue.jobs") == 512


REFUSED_TO_THE_PRODUCER = {
    "dequeue": "SELECT * FROM pgqueue.dequeue(1, NULL, NULL)",
    "complete": "SELECT pgqueue.complete({id})",
    "complete_many": "SELECT pgqueue.complete_many(ARRAY[{id}]::bigint[], ARRAY[NULL]::text[],"
    " ARRAY[NULL]::timestamptz[])",
    "fail": "SELECT * FROM pgqueue.fail({id}, 'no')",
    "cancel": "SELECT pgqueue.cancel_job({id})",
    "retry": "SELECT pgqueue.retry_jobs(ARRAY[{id}]::bigint[], NULL, NULL)",
    "clear": "SELECT pgqueue.clear_jobs(NULL)",
    "cleanup": "SELECT pgqueue.cleanup()",
    "configure_queue": "SELECT pgqueue.configure_queue('q', 1, NULL)",
    "add_recurring": "SELECT pgqueue.add_recurring('q', 'tick', 1, '{{\"hours\": 1}}', NULL)",
    "update": "UPDATE pgqueue.jobs SET priority = 0 WHERE id = {id}",
    "update status": "UPDATE pgqueue.jobs SET status = 'completed' WHERE id = {id}",
    "delete": "DELETE FROM pgqueue.jobs WHERE id = {id}",
    "truncate": "TRUNCATE pgqueue.jobs",
    "lock": "SELECT id FROM pgqueue.jobs WHERE id = {id} FOR UPDATE",
    "insert as completed": "INSERT INTO pgqueue.jobs (name, status) VALUES ('x', 'completed')",
    "insert with attempts": "INSERT INTO pgqueue.jobs (name, attempts) VALUES ('x', 3)",
    "alter": "ALTER TABLE pgqueue.jobs ADD COLUMN evil integer",
    "drop function": "DROP FUNCTION pgqueue.dequeue(integer, text[], text[])",
    "replace function": "CREATE OR REPLACE FUNCTION pgqueue.cleanup() RETURNS bigint"
    " LANGUAGE sql AS $$ SELECT 0::bigint $$",
    "create in schema": "CREATE TABLE pgqueue.evil (x integer)",
    "setval": "SELECT setval(pg_get_serial_sequence('pgqueue.jobs', 'id'), 1)",
    "queue settings": "INSERT INTO pgqueue.queues (name, max_concurrency) VALUES ('q', 1)",
    "cleanup rules": "DELETE FROM pgqueue.cleanup_rules",
    "job starts": "SELECT * FROM pgqueue.job_starts",
}


@pytest.mark.parametrize("what", sorted(REFUSED_TO_THE_PRODUCER))
def test_the_producer_may_not(what, with_roles, make_login, conn):
    job_id = pgqueue.add_job_to_queue(conn, name="victim")
    before = conn.execute("SELECT * FROM pgqueue.jobs ORDER BY id").fetchall()
    producer_dsn = make_login("pgqueue_producer", with_roles)
    statement = REFUSED_TO_THE_PRODUCER[what].format(id=job_id)
    with (
        psycopg.connect(producer_dsn, autocommit=True) as producer,
        pytest.raises(pg_errors.InsufficientPrivilege),
    ):
        producer.execute(statement.encode())
    assert conn.execute("SELECT * FROM pgqueue.jobs ORDER BY id").fetchall() == before


def test_a_worker_as_the_producer_is_refused_and_claims_nothing(
    with_roles, make_login, conn, caplog
):
    pgqueue.add_job_to_queue(conn, name="x")
    producer_dsn = make_login("pgqueue_producer", with_roles)
    worker = pgqueue.JobQueueWorker(producer_dsn, handler=lambda c, job: None, listen=False)
    with running(worker):
        wait_until(
            lambda: any("permission denied" in _logged(r) for r in caplog.records),
            what="the worker's slot to be refused",
        )
    assert scalar(conn, "SELECT status FROM pgqueue.jobs") == "pending"


def _logged(record: Any) -> str:
    text: str = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        text += f" {record.exc_info[1]}"
    return text


# -- the worker ---------------------------------------------------------------------


def test_a_worker_role_runs_a_worker_end_to_end(with_roles, make_login, conn):
    _revoke_execute_from_public(with_roles)  # the grants name every function it needs
    create_results_table(conn)
    worker_dsn = make_login("pgqueue_worker", with_roles)
    producer_dsn = make_login("pgqueue_producer", with_roles)
    # The application grants its own tables to its login roles.
    conn.execute(sql.SQL("GRANT SELECT, INSERT ON results TO {}").format(_user(worker_dsn)))
    # What an administrator (the owner) sets up: settings, a schedule, clean-up rules.
    pgqueue.configure_queue(conn, "limited", max_concurrency=1, retry={"backoff": "fixed"})
    pgqueue.add_recurring_job_to_queue(conn, name="tick", interval={"hours": 1})
    pgqueue.register_cleanup(conn, delete_successful_jobs=True)
    conn.execute(
        "INSERT INTO pgqueue.jobs (name, status, updated_at)"
        " VALUES ('old', 'completed', now() - interval '1 day')"
    )
    calls = Calls()

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        c.execute("INSERT INTO results (job_id, note) VALUES (%s, %s)", (job.id, job.name))
        calls.add(job.name)
        if job.name == "follow-up":
            pgqueue.add_job_to_queue(c, name="tick")  # handlers may enqueue
        if job.name == "bad":
            raise RuntimeError("refused on purpose")

    worker = pgqueue.JobQueueWorker(
        worker_dsn,
        handler={"tick": handler, "bad": handler, "follow-up": handler, "limited": handler},
        parallel_count=2,
        poll_interval=30,  # only a NOTIFY wakes it
    )
    with running(worker), psycopg.connect(producer_dsn, autocommit=True) as producer:
        # The first tick (recurring) and the clean-up job run at start.
        wait_until(lambda: calls.items.count("tick") >= 1, what="the recurring job's target")
        pgqueue.add_job_to_queue(producer, name="follow-up")
        pgqueue.add_job_to_queue(producer, name="bad", max_attempts=1)
        pgqueue.add_jobs_to_queue(producer, [{"name": "limited", "queue": "limited"}] * 5)
        wait_until(lambda: calls.items.count("limited") == 5, what="the limited queue's jobs")
        wait_until(lambda: calls.items.count("tick") >= 2, what="the follow-up's own job")
        wait_until(
            lambda: (
                scalar(
                    conn,
                    "SELECT count(*) FROM pgqueue.jobs WHERE name = 'bad' AND status = 'failed'",
                )
                == 1
            ),
            what="the bad job to fail",
        )
        # The built-in clean-up job ran as the worker role and deleted the old job.
        wait_until(
            lambda: scalar(conn, "SELECT count(*) FROM pgqueue.jobs WHERE name = 'old'") == 0,
            what="the clean-up job",
        )
    assert worker.stats.as_dict()["failed"] == 1
    assert len(result_ids(conn)) == len(calls) - 1  # the bad job's write was rolled back
    last_error = scalar(conn, "SELECT last_error FROM pgqueue.jobs WHERE name = 'bad'")
    assert "refused on purpose" in last_error


def test_the_worker_role_cannot_change_what_a_job_is(with_roles, make_login, conn):
    job_id = pgqueue.add_job_to_queue(conn, name="victim", data={"a": 1})
    worker_dsn = make_login("pgqueue_worker", with_roles)
    statements = [
        f"UPDATE pgqueue.jobs SET data = '{{}}' WHERE id = {job_id}",
        f"UPDATE pgqueue.jobs SET name = 'other', queue = 'q' WHERE id = {job_id}",
        "INSERT INTO pgqueue.jobs (id, name) VALUES (1000000, 'x')",
        "SELECT pgqueue.configure_queue('q', 1, NULL)",
        "SELECT pgqueue.retry_jobs(NULL, NULL, NULL)",
        "ALTER TABLE pgqueue.jobs ADD COLUMN evil integer",
        "TRUNCATE pgqueue.jobs",
    ]
    with psycopg.connect(worker_dsn, autocommit=True) as worker:
        for statement in statements:
            with pytest.raises(pg_errors.InsufficientPrivilege):
                worker.execute(statement.encode())
    assert scalar(conn, "SELECT data FROM pgqueue.jobs WHERE id = %s", (job_id,)) == {"a": 1}


def test_producer_and_worker_roles_side_by_side(with_roles, make_login, conn):
    # The shape of a deployment: the web app enqueues as a producer, a worker process runs.
    create_results_table(conn)
    worker_dsn = make_login("pgqueue_worker", with_roles)
    producer_dsn = make_login("pgqueue_producer", with_roles)
    conn.execute(sql.SQL("GRANT INSERT ON results TO {}").format(_user(worker_dsn)))
    total = 200

    def handler(c: psycopg.Connection[Any], job: pgqueue.JobRecord) -> None:
        c.execute("INSERT INTO results (job_id) VALUES (%s)", (job.id,))

    worker = pgqueue.JobQueueWorker(worker_dsn, handler=handler, parallel_count=4)
    with running(worker), psycopg.connect(producer_dsn, autocommit=True) as producer:
        ids = [pgqueue.add_job_to_queue(producer, name="one") for _ in range(total // 2)]
        ids += pgqueue.add_jobs_to_queue(producer, [{"name": "many"}] * (total // 2))
        wait_until(lambda: len(result_ids(conn)) == total, what="every job")
    assert result_ids(conn) == sorted(ids)
