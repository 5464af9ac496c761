"""Bring a database's pgqueue schema up to date: numbered migrations, then functions.sql
(and the optional least-privilege roles of roles.sql).

Safe to run from several processes at once (a session advisory lock
serialises them) and idempotent. Refuses a schema newer than this code, and a
connection that does not stay on one server session (a transaction pooler).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final, LiteralString

import psycopg

from . import _queries as q
from ._db import SqlTarget, connection, translate_errors
from .errors import ConfigurationError, SchemaNotMigratedError, SchemaTooNewError

__all__ = ["Migration", "latest_version", "migrate", "migrations", "schema_version"]

logger = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Statements only migrate() sends (the rest are in pgqueue._queries).
# The lock of pgqueue._queries.MIGRATE_LOCK, and which backend took it, in one statement.
_LOCK: Final[LiteralString] = (
    "SELECT pg_catalog.pg_backend_pid() FROM pg_catalog.pg_advisory_lock(1885827446)"
)
_BACKEND_PID: Final[LiteralString] = "SELECT pg_catalog.pg_backend_pid()"
_IS_APPLIED: Final[LiteralString] = (
    "SELECT EXISTS (SELECT FROM pgqueue.migrations WHERE version = %s)"
)
# Whether the roles of roles.sql have been set up in this database.
_ROLES_SET_UP: Final[LiteralString] = (
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles r"
    " WHERE r.rolname IN ('pgqueue_producer', 'pgqueue_worker')"
    " AND pg_catalog.has_schema_privilege(r.oid, 'pgqueue', 'USAGE'))"
)
# After a move to another backend: free the migration lock left on the
# first one (a pooled server connection, idle now), or it blocks every later
# migrate: unlock it when this statement runs there, else end that session.
# No row: the lock is no longer held there.
_FREE_LOCK: Final[LiteralString] = (
    "SELECT CASE WHEN a.pid = pg_catalog.pg_backend_pid()"
    " THEN pg_catalog.pg_advisory_unlock(1885827446)"
    " ELSE pg_catalog.pg_terminate_backend(a.pid) END"
    " FROM pg_catalog.pg_stat_activity a"
    " WHERE a.pid = %s AND (a.pid = pg_catalog.pg_backend_pid() OR a.state = 'idle')"
    " AND EXISTS (SELECT FROM pg_catalog.pg_locks l WHERE l.pid = a.pid AND l.granted"
    " AND l.locktype = 'advisory' AND l.classid = 0 AND l.objid = 1885827446 AND l.objsubid = 1)"
)


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


def _roles_sql() -> str:
    return (sql_dir() / "roles.sql").read_text(encoding="utf-8")


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


def migrate(sql: SqlTarget, *, roles: bool | None = None) -> list[int]:
    """Apply pending migrations and (re)create the functions; return the versions applied.

    ``sql`` is a psycopg Connection or a psycopg_pool ConnectionPool (a
    connection is checked out for the migration); anything else raises
    ConfigurationError.

    Takes a session advisory lock for the duration, so concurrent callers
    wait and then find nothing to do. Each migration runs in its own
    transaction. The connection must not be inside a transaction, and must
    stay on one server session: a direct connection (or a pooler in session
    mode), not one through pgbouncer's transaction pooling. Such a
    connection is noticed when it moves to another backend between
    transactions, and refused with ConfigurationError before the next step.

    ``roles`` (default None) is about the optional least-privilege roles
    ``pgqueue_producer`` and ``pgqueue_worker`` (sql/roles.sql): True creates
    them (needs CREATEROLE) and applies their grants; None re-applies the
    grants when this database already has them, so they follow the schema;
    False leaves them alone.
    """
    with connection(sql) as conn:
        return _migrate(conn, roles)


def _migrate(conn: psycopg.Connection[Any], roles: bool | None) -> list[int]:
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ConfigurationError("migrate() needs a connection that is not inside a transaction")
    if roles is not None and not isinstance(roles, bool):
        raise ConfigurationError("roles must be True, False or None")
    known = migrations()
    latest = known[-1].version
    applied_now: list[int] = []
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with translate_errors():
            locked_on = int(_scalar(conn, _LOCK))
            try:
                with conn.transaction():
                    _check_same_backend(conn, locked_on)
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
                    with conn.transaction():
                        _check_same_backend(conn, locked_on)
                        if _scalar(conn, _IS_APPLIED, (migration.version,)):
                            continue
                        logger.info("applying migration %04d_%s", migration.version, migration.name)
                        conn.execute(migration.sql.encode())
                        conn.execute(q.RECORD_MIGRATION, (migration.version, migration.name))
                    applied_now.append(migration.version)
                with conn.transaction():
                    _check_same_backend(conn, locked_on)
                    conn.execute(_functions_sql().encode())
                    if roles or (roles is None and _scalar(conn, _ROLES_SET_UP)):
                        logger.info("applying the grants of pgqueue_producer and pgqueue_worker")
                        conn.execute(_roles_sql().encode())
            finally:
                # False: this statement ran on another backend than the lock's.
                if not conn.closed and not conn.broken and not _scalar(conn, q.MIGRATE_UNLOCK):
                    _free_lock(conn, locked_on)
    finally:
        if not conn.closed and not conn.broken:
            conn.autocommit = autocommit
    return applied_now


def _scalar(conn: psycopg.Connection[Any], query: LiteralString, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    return int(_scalar(conn, _BACKEND_PID))


def _check_same_backend(conn: psycopg.Connection[Any], locked_on: int) -> None:
    """Raise when this transaction runs on another backend than the one holding the lock."""
    now_on = _backend_pid(conn)
    if now_on != locked_on:
        raise ConfigurationError(
            "pgqueue.migrate() needs a connection that stays on one server session: this one "
            f"moved from backend {locked_on} to {now_on} between transactions, as through "
            "pgbouncer in transaction-pooling mode, so its session lock would not keep two "
            "migrations apart. Run `pgqueue migrate` with a direct DSN (or a pooler in "
            "session mode); nothing was changed in this step."
        )


def _free_lock(conn: psycopg.Connection[Any], pid: int) -> None:
    """Free the migration lock left on pooled backend ``pid`` (best effort: ending another
    session needs the right to signal it, which the same role has)."""
    if conn.closed or conn.broken:
        return
    try:
        row = conn.execute(_FREE_LOCK, (pid,)).fetchone()
    except psycopg.Error as exc:
        logger.debug("could not free the migration lock on backend %d: %s", pid, exc)
        row = (False,)
    if row is not None and not row[0]:
        logger.warning(
            "the migration lock may still be held by backend %d (a pooled server connection); "
            "it is released when that connection closes, or by SELECT pg_terminate_backend(%d)",
            pid,
            pid,
        )
