"""Helpers for the CLI acceptance tests: run `python -m pgqueue` as a real subprocess, poll with a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: How long any single wait may take before the test fails.
DEADLINE = 30.0

#: A module the `work` tests import with --app: every handler writes a row.
APP_MODULE = """
import time

INSERT = "INSERT INTO cli_results (job_id, name, attempt) VALUES (%s, %s, %s)"


def fast(conn, job):
    conn.execute(INSERT, (job.id, job.name, job.attempts))


def slow(conn, job):
    conn.execute(INSERT, (job.id, job.name, job.attempts))
    time.sleep(float(job.data.get("seconds", 2)))


handlers = {"fast": fast, "slow": slow}
not_a_handler = 42
"""

CREATE_RESULTS = (
    "CREATE TABLE cli_results (job_id bigint PRIMARY KEY, name text NOT NULL, attempt int NOT NULL)"
)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any PGQUEUE_* or DATABASE_URL, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PGQUEUE_") and key != "DATABASE_URL"
    }
    env.update(extra or {})
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgqueue", *args]


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pgqueue ARGS`` to completion; ``env`` is added to a clean environment."""
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def wait_until(
    predicate: Callable[[], T], *, timeout: float = DEADLINE, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


def write_app(directory: Path, name: str = "cli_app") -> str:
    """Write the --app module into ``directory``; return its module name."""
    (directory / f"{name}.py").write_text(APP_MODULE, encoding="utf-8")
    return name
