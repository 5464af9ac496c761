"""The exceptions pgqueue raises: one small tree, rooted at PgQueueError.

    PgQueueError
    ├── InvalidJobError          bad input to an enqueue or schedule call (also a ValueError)
    ├── ConfigurationError       bad arguments to a worker or the CLI (also a ValueError)
    ├── ConnectError             the database could not be reached
    └── SchemaError              the database schema does not fit this code
        ├── SchemaNotMigratedError   pgqueue's schema is missing or older: run `pgqueue migrate`
        └── SchemaTooNewError        the schema was migrated by a newer pgqueue

Each class's docstring is its default message.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnectError",
    "InvalidJobError",
    "PgQueueError",
    "SchemaError",
    "SchemaNotMigratedError",
    "SchemaTooNewError",
]


class PgQueueError(Exception):
    """A pgqueue error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidJobError(PgQueueError, ValueError):
    """The job is not valid; nothing was written."""


class ConfigurationError(PgQueueError, ValueError):
    """The configuration is not valid."""


class ConnectError(PgQueueError):
    """Could not connect to the database."""


class SchemaError(PgQueueError):
    """The database schema does not match this version of pgqueue."""


class SchemaNotMigratedError(SchemaError):
    """pgqueue's tables are missing or out of date in this database: run `pgqueue migrate`."""


class SchemaTooNewError(SchemaError):
    """The database was migrated by a newer pgqueue than this one; upgrade pgqueue."""


for _cls in (
    PgQueueError,
    InvalidJobError,
    ConfigurationError,
    ConnectError,
    SchemaError,
    SchemaNotMigratedError,
    SchemaTooNewError,
):
    _cls.__module__ = "pgqueue"
