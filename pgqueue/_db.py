"""Connections: accept a Connection, a ConnectionPool or a DSN, and turn psycopg errors into pgqueue's."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any, Final, Literal, TypeAlias

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
        raise ConfigurationError(f"invalid DSN: {str(exc).strip()}") from exc
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectError(f"could not connect to {describe_dsn(dsn)}: {first}") from exc


def connection(sql: SqlTarget) -> AbstractContextManager[psycopg.Connection[Any]]:
    """A context manager giving a connection: a Connection as is, or one checked out of a
    ConnectionPool.

    On a Connection, statements join whatever transaction the caller has open;
    a pool connection commits when the block ends.
    """
    if isinstance(sql, psycopg.Connection):
        return contextlib.nullcontext(sql)
    if isinstance(sql, ConnectionPool):
        return sql.connection()
    raise ConfigurationError(
        f"expected a psycopg Connection or a psycopg_pool ConnectionPool, got {type(sql).__name__}"
    )


def translated_error(exc: BaseException) -> Exception | None:
    """The pgqueue error that a psycopg error means, or None when it keeps its own type."""
    if isinstance(
        exc, (pg_errors.UndefinedFunction, pg_errors.UndefinedTable, pg_errors.InvalidSchemaName)
    ):
        if "pgqueue" not in str(exc):
            return None
        return SchemaNotMigratedError(
            "pgqueue's schema is missing or out of date in this database: run `pgqueue migrate` "
            f"(or pgqueue.migrate(conn)); the server said: {str(exc).splitlines()[0]}"
        )
    if isinstance(exc, psycopg.DataError):
        # A value the server refused (out of range, bad encoding): the
        # statement failed as a whole, so nothing was written.
        return InvalidJobError(f"the database refused the value: {str(exc).splitlines()[0]}")
    if isinstance(exc, psycopg.OperationalError):
        if exc.sqlstate and exc.sqlstate.startswith("54"):
            # Program limit exceeded (an index row too large, say): the value.
            return InvalidJobError(f"the database refused the value: {str(exc).splitlines()[0]}")
        # Only connection-level failures (no SQLSTATE, class 08, or an
        # administrator shutdown); other server errors keep their type.
        if exc.sqlstate is not None and not exc.sqlstate.startswith(("08", "57P")):
            return None
        return ConnectError(f"database connection failed: {str(exc).strip()}")
    return None


class _TranslateErrors:
    """See :func:`translate_errors`. (A class: contextlib's generator-based kind costs three
    more Python calls, and every enqueue goes through two.)"""

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> Literal[False]:
        translated = None if exc is None else translated_error(exc)
        if translated is None:
            return False
        raise translated from exc


_TRANSLATE_ERRORS: Final = _TranslateErrors()


def translate_errors() -> _TranslateErrors:
    """Turn the psycopg errors that mean something to pgqueue into pgqueue errors (a context
    manager)."""
    return _TRANSLATE_ERRORS
