"""Worker slots and the run directory: pid and log files, and whether a pid is still our worker.

A slot's label (``default.0``, ``all.1``) names its files,
``worker.<label>.pid`` and ``worker.<label>.log``. A pid file is only trusted
while the process it names is a ``pgqueue work`` started for that very file
(its command line holds ``pgqueue``, ``work`` and ``--pid-file <path>``), so
a recycled pid is never taken for a worker.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import quote, unquote

from .errors import ConfigurationError

__all__ = [
    "RunDir",
    "WorkerSlot",
    "is_stopping",
    "is_worker",
    "log_tail",
    "parse_workers",
    "read_pid",
    "release_pid_file",
    "remove_pid",
    "signal_process",
    "write_pid",
]

_LOG_TAIL: Final = 15


# -- worker slots ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class WorkerSlot:
    """One detached worker: its queue (None: every queue) and its index within that queue."""

    queue: str | None
    index: int

    @property
    def label(self) -> str:
        """``default.0``, ``all.1``: the name of its pid and log files.

        A queue name is %-escaped to a safe file name (``.`` included); a
        queue literally named ``all`` becomes ``%61ll``.
        """
        return f"{_queue_label(self.queue)}.{self.index}"

    def describe(self) -> str:
        """``worker default.0 (queue default)``, ``worker all.0 (all queues)``."""
        where = "all queues" if self.queue is None else f"queue {self.queue}"
        return f"worker {self.label} ({where})"


def _queue_label(queue: str | None) -> str:
    if queue is None:
        return "all"
    text = quote(queue, safe="-_").replace(".", "%2E").replace("~", "%7E")
    return "%61ll" if text == "all" else text


def parse_workers(text: str) -> list[WorkerSlot]:
    """``-n``: ``3`` (three workers of every queue) or ``default:2,email:1`` (per queue).

    Items may be mixed (``1,email:2``); a queue may appear once. argparse type.
    """
    slots: list[WorkerSlot] = []
    seen: set[str | None] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise argparse.ArgumentTypeError(
                f"expected N or QUEUE:N[,QUEUE:N...], got {text!r} (an empty item)"
            )
        queue_text, sep, count_text = item.rpartition(":")
        queue: str | None = queue_text.strip() if sep else None
        if sep and not queue:
            raise argparse.ArgumentTypeError(f"{item!r}: the queue name is empty")
        try:
            count = int(count_text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected N or QUEUE:N, with N a whole number"
            ) from None
        if not 1 <= count <= 1000:
            raise argparse.ArgumentTypeError(f"{item!r}: the count must be 1 to 1000")
        if queue in seen:
            raise argparse.ArgumentTypeError(
                f"{'every queue' if queue is None else repr(queue)} is given twice in {text!r}"
            )
        seen.add(queue)
        slots.extend(WorkerSlot(queue, index) for index in range(count))
    return slots


# -- the run directory ----------------------------------------------------------------


class RunDir:
    """The directory of pid and log files (made on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()

    def pid_file(self, slot: WorkerSlot) -> Path:
        """``<dir>/worker.<label>.pid``: the worker's pid (and ``stopping`` once asked to stop)."""
        return self.path / f"worker.{slot.label}.pid"

    def log_file(self, slot: WorkerSlot) -> Path:
        """``<dir>/worker.<label>.log``: the worker's output, appended to by each start."""
        return self.path / f"worker.{slot.label}.log"

    def slots(self) -> list[WorkerSlot]:
        """The workers that have a pid file here, in order."""
        found: list[WorkerSlot] = []
        if not self.path.is_dir():
            return found
        for path in self.path.glob("worker.*.pid"):
            label, _, index = path.name[len("worker.") : -len(".pid")].rpartition(".")
            if label and index.isdigit():
                found.append(WorkerSlot(None if label == "all" else unquote(label), int(index)))
        return sorted(found, key=lambda s: (s.queue is not None, s.queue or "", s.index))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory's lock: one start / stop / restart at a time."""
        try:
            import fcntl  # noqa: PLC0415 (POSIX only: fail with a message elsewhere)
        except ImportError:  # pragma: no cover - Windows
            raise ConfigurationError(
                "pgqueue start/stop/restart need a POSIX system; use `pgqueue work`"
            ) from None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = (self.path / ".lock").open("a")
        except OSError as exc:
            raise ConfigurationError(f"cannot use run directory {self.path}: {exc}") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return []


def read_pid(path: Path) -> int | None:
    """The pid on the first line of ``path``; None when it is missing or holds no pid."""
    words = _read(path)
    return int(words[0]) if words and words[0].isdigit() and int(words[0]) > 0 else None


def write_pid(path: Path, pid: int, *, stopping: bool = False) -> None:
    """Write ``pid`` to ``path`` atomically; ``stopping`` adds a line saying a stop was asked for."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n" + ("stopping\n" if stopping else ""), encoding="utf-8")
    tmp.replace(path)


def is_stopping(path: Path) -> bool:
    """True when a stop was asked for (the worker got its SIGINT): a second one would
    make it quit at once, abandoning its jobs."""
    return _read(path)[1:2] == ["stopping"]


def remove_pid(path: Path, pid: int | None) -> None:
    """Remove ``path`` if it still names ``pid`` (None: whatever it holds)."""
    if pid is None or read_pid(path) == pid:
        path.unlink(missing_ok=True)


def release_pid_file(path: str | Path) -> None:
    """For a worker leaving: remove its pid file if it names this process."""
    remove_pid(Path(path), os.getpid())


def _command_line(pid: int) -> str | None:
    """The process's arguments joined by spaces; None when it is gone (or a zombie)."""
    proc = Path("/proc")
    if proc.is_dir():
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip() or None
    try:  # pragma: no cover - systems without /proc
        found = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        return None
    return found.stdout.strip() or None  # pragma: no cover


def is_worker(pid: int, pid_file: Path) -> bool:
    """True when ``pid`` runs a ``pgqueue work`` started for ``pid_file``."""
    if pid == os.getpid():
        return False
    line = _command_line(pid)
    return (
        line is not None
        and "pgqueue" in line
        and " work " in f" {line} "
        and f"--pid-file {pid_file}" in line
    )


def signal_process(pid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to ``pid``; False when there is no such process."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def log_tail(path: Path, offset: int) -> str:
    """The last lines of ``path`` from byte ``offset`` on, indented, for an error message."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-_LOG_TAIL:])
