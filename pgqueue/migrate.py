"""Bring a database's pgqueue schema up to date: numbered migrations, then functions.sql.

Safe to run from several processes at once (a session advisory lock
serialises them) and idempotent. Refuses a schema newer than this code.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import psycopg

from . import _queries as q
from ._db import translate_errors
from .errors import ConfigurationError, SchemaNotMigratedError, SchemaTooNewError

__all__ = ["Migration", "latest_version", "migrate", "migrations", "schema_version"]

logger = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward-only migration file, ``NNNN_slug.sql``."""

    version: int
    name: str
    sql: str


def sql_dir() -> Traversable:
    """The folder of pgqueue's SQL files: inside the installed package, or the source tree's ``sql/``."""
    packaged = resources.files("pgqueue") / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


@cache
def migrations() -> tuple[Migration, ...]:
    """All migrations this code knows, in order."""
    found = []
    for entry in (sql_dir() / "migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return tuple(found)


def latest_version() -> int:
    """The schema version this code expects."""
    return migrations()[-1].version


def _functions_sql() -> str:
    return (sql_dir() / "functions.sql").read_text(encoding="utf-8")


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The database's applied schema version; None if pgqueue was never migrated there."""
    with translate_errors():
        row = conn.execute(q.MIGRATIONS_TABLE_EXISTS).fetchone()
        if not row or not row[0]:
            return None
        row = conn.execute("SELECT coalesce(max(version), 0) FROM pgqueue.migrations").fetchone()
    return int(row[0]) if row else 0


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise SchemaNotMigratedError or SchemaTooNewError unless the schema is exactly current."""
    version = schema_version(conn)
    latest = latest_version()
    if version is None or version < latest:
        raise SchemaNotMigratedError(
            f"pgqueue's schema is at version {version or 0}, this code needs {latest}: "
            "run `pgqueue migrate` (or pgqueue.migrate(conn))"
        )
    if version > latest:
        raise SchemaTooNewError(
            f"the database's pgqueue schema is at version {version}, newer than this "
            f"pgqueue knows ({latest}): upgrade pgqueue"
        )


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply pending migrations and (re)create the functions; return the versions applied.

    Takes a session advisory lock for the duration, so concurrent callers
    wait and then find nothing to do. Each migration runs in its own
    transaction. The connection must not be inside a transaction.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ConfigurationError("migrate() needs a connection that is not inside a transaction")
    known = migrations()
    latest = known[-1].version
    applied_now: list[int] = []
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with translate_errors():
            conn.execute(q.MIGRATE_LOCK)
            try:
                with conn.transaction():
                    conn.execute(q.CREATE_SCHEMA)
                    conn.execute(q.CREATE_MIGRATIONS_TABLE)
                done = {row[0] for row in conn.execute(q.APPLIED_VERSIONS)}
                if done and max(done) > latest:
                    raise SchemaTooNewError(
                        f"the database's pgqueue schema is at version {max(done)}, newer than "
                        f"this pgqueue knows ({latest}): upgrade pgqueue"
                    )
                for migration in known:
                    if migration.version in done:
                        continue
                    logger.info("applying migration %04d_%s", migration.version, migration.name)
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        conn.execute(q.RECORD_MIGRATION, (migration.version, migration.name))
                    applied_now.append(migration.version)
                with conn.transaction():
                    conn.execute(_functions_sql().encode())
            finally:
                if not conn.closed and not conn.broken:
                    conn.execute(q.MIGRATE_UNLOCK)
    finally:
        if not conn.closed and not conn.broken:
            conn.autocommit = autocommit
    return applied_now
