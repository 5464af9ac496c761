"""Connections: accept a Connection, a ConnectionPool or a DSN, and turn psycopg errors into pgqueue's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeAlias

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from .errors import ConfigurationError, ConnectError, InvalidJobError, SchemaNotMigratedError

SqlTarget: TypeAlias = "psycopg.Connection[Any] | ConnectionPool[Any]"


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, as 'host:port/dbname', without the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparseable DSN"
    host = params.get("host") or "localhost (default socket)"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or ""
    return f"{host}:{port}/{dbname}"


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection, raising ConnectError that says where it tried."""
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"invalid DSN: {exc}") from exc
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectError(f"could not connect to {describe_dsn(dsn)}: {first}") from exc


@contextlib.contextmanager
def connection(sql: SqlTarget) -> Iterator[psycopg.Connection[Any]]:
    """Yield a connection from a Connection (as is) or a ConnectionPool (checked out).

    On a Connection, statements join whatever transaction the caller has open;
    a pool connection commits when the block ends.
    """
    if isinstance(sql, psycopg.Connection):
        yield sql
    elif isinstance(sql, ConnectionPool):
        with sql.connection() as conn:
            yield conn
    else:
        raise ConfigurationError(
            "expected a psycopg Connection or a psycopg_pool ConnectionPool, "
            f"got {type(sql).__name__}"
        )


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn the psycopg errors that mean something to pgqueue into pgqueue errors."""
    try:
        yield
    except (
        pg_errors.UndefinedFunction,
        pg_errors.UndefinedTable,
        pg_errors.InvalidSchemaName,
    ) as exc:
        if "pgqueue" not in str(exc):
            raise
        raise SchemaNotMigratedError(
            "pgqueue's schema is missing or out of date in this database: run `pgqueue migrate` "
            f"(or pgqueue.migrate(conn)); the server said: {str(exc).splitlines()[0]}"
        ) from exc
    except psycopg.DataError as exc:
        # A value the server refused (out of range, bad encoding): the
        # statement failed as a whole, so nothing was written.
        raise InvalidJobError(
            f"the database refused the value: {str(exc).splitlines()[0]}"
        ) from exc
    except psycopg.OperationalError as exc:
        if exc.sqlstate and exc.sqlstate.startswith("54"):
            # Program limit exceeded (an index row too large, say): the value.
            raise InvalidJobError(
                f"the database refused the value: {str(exc).splitlines()[0]}"
            ) from exc
        # Only connection-level failures (no SQLSTATE, class 08, or an
        # administrator shutdown); other server errors keep their type.
        if exc.sqlstate is not None and not exc.sqlstate.startswith(("08", "57P")):
            raise
        raise ConnectError(f"database connection failed: {str(exc).strip()}") from exc
