"""The exceptions pgqueue raises: one small tree, rooted at PgQueueError.

    PgQueueError
    ├── JobFailed                raised by a handler to fail its attempt with exactly this message
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
    "JobFailed",
    "PgQueueError",
    "SchemaError",
    "SchemaNotMigratedError",
    "SchemaTooNewError",
]


class PgQueueError(Exception):
    """A pgqueue error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class JobFailed(PgQueueError):
    """The handler failed the attempt on purpose; its message is kept as last_error as it is.

    Raise it from a handler to fail an attempt without a traceback in
    ``last_error`` (Reaction's ``job.fail(reason)``); the retry policy decides
    what follows, as for any other exception.
    """


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
    JobFailed,
    InvalidJobError,
    ConfigurationError,
    ConnectError,
    SchemaError,
    SchemaNotMigratedError,
    SchemaTooNewError,
):
    _cls.__module__ = "pgqueue"
