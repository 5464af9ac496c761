"""Migrations: idempotent, concurrent-safe, refuse a newer schema, and build the documented schema."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import psycopg
import pytest

import pgqueue
from pgqueue.migrate import latest_version, migrations, schema_version, sql_dir

README = Path(__file__).resolve().parents[2] / "README.md"


def test_migrate_is_idempotent(empty_dsn):
    with psycopg.connect(empty_dsn) as conn:
        assert schema_version(conn) is None
        conn.rollback()
        assert pgqueue.migrate(conn) == [m.version for m in migrations()]
        assert pgqueue.migrate(conn) == []
        assert schema_version(conn) == latest_version()
        rows = conn.execute("SELECT version, name FROM pgqueue.migrations").fetchall()
    assert rows == [(m.version, m.name) for m in migrations()]


def test_concurrent_migrations_apply_once(empty_dsn):
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(empty_dsn) as conn:
                results.append(pgqueue.migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results, key=len) == [[]] * 5 + [[m.version for m in migrations()]]


def test_a_newer_schema_is_refused(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.migrations (version, name) VALUES (9999, 'future')")
        with pytest.raises(pgqueue.SchemaTooNewError, match="upgrade pgqueue"):
            pgqueue.migrate(conn)
    worker = pgqueue.JobQueueWorker(dsn, handler=lambda conn, job: None)
    with pytest.raises(pgqueue.SchemaTooNewError):
        worker.start()
    assert not worker.is_started


def test_a_worker_on_an_unmigrated_database_says_to_migrate(empty_dsn):
    worker = pgqueue.JobQueueWorker(empty_dsn, handler=lambda conn, job: None)
    with pytest.raises(pgqueue.SchemaNotMigratedError, match="pgqueue migrate"):
        worker.start()


def test_migrate_refuses_a_connection_inside_a_transaction(empty_dsn):
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(pgqueue.ConfigurationError, match="not inside a transaction"):
            pgqueue.migrate(conn)


def test_migrate_takes_a_pool_and_refuses_a_dsn_string(empty_dsn):
    from psycopg_pool import ConnectionPool

    with pytest.raises(pgqueue.ConfigurationError, match="got str"):
        pgqueue.migrate(empty_dsn)  # type: ignore[arg-type]
    with ConnectionPool(empty_dsn, min_size=1, max_size=1, open=True) as pool:
        assert pgqueue.migrate(pool) == [m.version for m in migrations()]
        assert pgqueue.migrate(pool) == []
        with pool.connection() as conn:
            assert schema_version(conn) == latest_version()
            assert not conn.autocommit  # the pool's connection is handed back as it was


def test_a_dsn_that_does_not_connect_names_host_and_port():
    worker = pgqueue.JobQueueWorker(
        "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=2",
        handler=lambda conn, job: None,
    )
    with pytest.raises(pgqueue.ConnectError, match=r"127\.0\.0\.1:1/nowhere"):
        worker.start()


def _documented_columns() -> list[tuple[str, str]]:
    """The column table under '### The jobs table' in the README."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### The jobs table", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", section, flags=re.MULTILINE)
    assert rows, "README has no jobs-table column list"
    return rows


def test_the_built_schema_is_the_documented_one(conn):
    built = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a
        WHERE a.attrelid = 'pgqueue.jobs'::regclass AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """
    ).fetchall()
    assert [tuple(r) for r in built] == _documented_columns()


def test_the_record_fields_follow_the_table(conn):
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'pgqueue.jobs'::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        )
    ]
    assert list(pgqueue.JobRecord.__dataclass_fields__) == columns


def test_sql_files_are_found_and_shipped_in_the_wheel(tmp_path):
    assert (sql_dir() / "functions.sql").is_file()
    assert migrations()[0].version == 1
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
    )
    (wheel_path,) = tmp_path.glob("pgqueue-*.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        names = wheel.namelist()
    assert "pgqueue/sql/functions.sql" in names
    assert "pgqueue/py.typed" in names
    shipped = sorted(n for n in names if n.startswith("pgqueue/sql/migrations/"))
    assert shipped == [f"pgqueue/sql/migrations/{m.version:04d}_{m.name}.sql" for m in migrations()]
