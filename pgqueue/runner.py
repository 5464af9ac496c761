"""The job runner (Redwood's ``rw jobs``): attached ``work`` and ``workoff``, detached ``start``,
``stop`` and ``restart``.

``start -n default:2,email:1`` runs one ``python -m pgqueue work`` child per
worker slot, each in a session of its own (Ctrl-C in the terminal does not
reach it), its output appended to ``worker.<label>.log`` and its pid in
``worker.<label>.pid`` in the run directory (see :mod:`pgqueue._run_dir`).
``stop`` sends SIGINT, which lets running jobs finish, and waits for the
exit. POSIX only (pid files, sessions and signals).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

from . import __version__
from ._app import load_app, timed_handlers
from ._cli_options import database, given_dsn, open_connection, split_queues
from ._cli_output import print_json
from ._db import describe_dsn
from ._input import MAX_PAYLOAD_ENV
from ._progress import Progress
from ._run_dir import (
    RunDir,
    WorkerSlot,
    is_stopping,
    is_worker,
    log_tail,
    read_pid,
    release_pid_file,
    remove_pid,
    signal_process,
    write_pid,
)
from .errors import ConfigurationError
from .migrate import check_schema
from .queue import pending_queue_size
from .worker import JobQueueWorker

__all__ = [
    "DEFAULT_RUN_DIR",
    "READY_MESSAGE",
    "cmd_restart",
    "cmd_start",
    "cmd_stop",
    "cmd_work",
    "cmd_workoff",
]

logger = logging.getLogger("pgqueue.cli")

#: Where pid and log files go unless --run-dir / PGQUEUE_RUN_DIR says otherwise.
DEFAULT_RUN_DIR: Final = Path(".pgqueue") / "run"

#: The line `pgqueue work` logs once its worker runs: `start` waits for it.
READY_MESSAGE: Final = "waiting for jobs"

_POLL: Final = 0.05
_KILL_WAIT: Final = 5.0


# -- work and workoff: attached ------------------------------------------------------


@contextlib.contextmanager
def _stop_on_signals(
    stop: threading.Event, then: Callable[[], None] | None = None
) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (and call ``then``); a second one quits at once
    (Ctrl-C: exit 130)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info(
            "%s: stopping, letting running jobs finish (again to quit at once)",
            signal.Signals(signum).name,
        )
        stop.set()
        if then is not None:
            then()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_work(args: argparse.Namespace) -> int:
    """``pgqueue work``: run a worker until SIGINT or SIGTERM, then stop gracefully."""
    try:
        return _work(args)
    finally:
        if args.pid_file:
            release_pid_file(args.pid_file)


def _work(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    queues = split_queues(args.queue)
    with database(args) as dsn:
        worker = JobQueueWorker(
            dsn,
            args.name,
            handler=timed_handlers(app),
            poll_interval=args.poll_interval,
            parallel_count=args.concurrency,
            queues=queues,
            listen=not args.no_listen,
            listen_dsn=args.listen_dsn,
            prepare=not args.no_prepare,
            metrics=args.metrics_port is not None,
            **_modes(args),
        )
        names = [args.name] if args.name else (sorted(app) if isinstance(app, Mapping) else None)
        logger.info(
            "pgqueue %s worker on %s: concurrency %d, batch size %d, queues %s, names %s, app %s",
            __version__,
            describe_dsn(dsn),
            args.concurrency,
            args.batch_size,
            ", ".join(queues) if queues else "all",
            ", ".join(names) if names else "all",
            args.app,
        )
        stop = threading.Event()
        with _stop_on_signals(stop), _metrics_server(args, dsn):
            worker.start()
            try:
                logger.info("%s; Ctrl-C or SIGTERM stops after running jobs finish", READY_MESSAGE)
                while not stop.wait(1.0):
                    pass
            finally:
                worker.stop()
        logger.info("worker stopped cleanly")
    return 0


@contextlib.contextmanager
def _progress(dsn: str, args: argparse.Namespace, worker: JobQueueWorker) -> Iterator[None]:
    """On a terminal, a progress bar on stderr while ``worker`` works off: jobs handled
    (completed, retried or failed) out of those due when it began. Nothing elsewhere, nor
    with -v. While the bar is drawn, the per-job INFO lines are left out (warnings stay):
    the summary counts them."""
    if not sys.stderr.isatty() or args.verbose:
        yield
        return
    with open_connection(dsn) as conn:
        check_schema(conn)
        due = pending_queue_size(conn, name=args.name, queues=split_queues(args.queue))
    total = due["pending_count"]
    bar = Progress(total, sys.stderr)
    done = threading.Event()

    def draw() -> None:
        finished = False
        while not finished:
            finished = done.wait(0.2)
            stats = worker.stats.as_dict()
            handled = stats["completed"] + stats["retried"] + stats["failed"]
            bar.update(min(handled, total), note=f"{stats['failed']} failed")

    quiet = _BelowWarning()
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(quiet)
    drawer = threading.Thread(target=draw, name="pgqueue-progress", daemon=True)
    drawer.start()
    try:
        yield
    finally:
        done.set()
        drawer.join()
        bar.close()
        for handler in handlers:
            handler.removeFilter(quiet)


class _BelowWarning(logging.Filter):
    """Drops records below WARNING (the per-job lines) while a progress bar is drawn."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def _metrics_server(args: argparse.Namespace, dsn: str) -> Iterator[None]:
    """Serve Prometheus metrics on --metrics-port while the block runs (nothing without it)."""
    if args.metrics_port is None:
        yield
        return
    # The optional extra, imported only when asked for (the worker checked it is there).
    from .metrics import start_http_server  # noqa: PLC0415

    try:
        server, thread = start_http_server(dsn, args.metrics_port, args.metrics_host)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc.strerror or exc}"
        ) from exc
    logger.info("Prometheus metrics on http://%s:%d/metrics", args.metrics_host, server.server_port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _modes(args: argparse.Namespace) -> dict[str, Any]:
    """JobQueueWorker's batch_size, timeout and lease from --batch-size, --handler-timeout, --lease."""
    if args.lease is not None and args.batch_size != 1:
        raise ConfigurationError(
            "--lease runs one job per slot at a time: it does not go with --batch-size"
        )
    return {"batch_size": args.batch_size, "timeout": args.handler_timeout, "lease": args.lease}


def cmd_workoff(args: argparse.Namespace) -> int:
    """``pgqueue workoff``: run every job due now, then exit with a summary.

    Jobs scheduled for later (a retry's backoff included) are left alone.
    """
    app = load_app(args.app)
    with database(args) as dsn:
        worker = JobQueueWorker(
            dsn,
            args.name,
            handler=timed_handlers(app),
            parallel_count=args.concurrency,
            queues=split_queues(args.queue),
            prepare=not args.no_prepare,
            **_modes(args),
        )
        started = time.monotonic()
        with _stop_on_signals(threading.Event(), then=worker.stop), _progress(dsn, args, worker):
            stats = worker.work_off().as_dict()
        elapsed = time.monotonic() - started
    if args.json:
        print_json({**stats, "elapsed_seconds": round(elapsed, 3)})
    else:
        print(
            f"workoff done in {elapsed:.2f} s: {stats['completed']} completed, "
            f"{stats['retried']} retried, {stats['failed']} failed"
        )
    return 0


# -- start ----------------------------------------------------------------------


@dataclasses.dataclass
class _Started:
    slot: WorkerSlot
    pid: int
    #: Where this run's output starts in the (appended) log file.
    offset: int
    #: How far the log has been searched for READY_MESSAGE (whole lines only).
    scanned: int = 0
    state: str = "starting"

    def exit_code(self) -> int | None:
        """The worker's exit code once it has exited (and is reaped), else None."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return -1
        return os.waitstatus_to_exitcode(status) if pid else None

    def ready(self, log_file: Path) -> bool:
        """True once the worker has logged READY_MESSAGE."""
        try:
            with log_file.open("rb") as handle:
                handle.seek(max(self.scanned, self.offset))
                chunk = handle.read()
        except OSError:
            return False
        end = chunk.rfind(b"\n") + 1
        if READY_MESSAGE.encode() in chunk[:end]:
            return True
        self.scanned = max(self.scanned, self.offset) + end
        return False


def _child_command(args: argparse.Namespace, slot: WorkerSlot, pid_file: Path) -> list[str]:
    command = [sys.executable, "-m", "pgqueue", "work", "--app", args.app]
    command += ["--concurrency", str(args.concurrency), "--poll-interval", str(args.poll_interval)]
    command += ["--pid-file", str(pid_file)]
    if args.no_listen:
        command.append("--no-listen")
    if args.no_prepare:
        command.append("--no-prepare")
    command += ["--batch-size", str(args.batch_size)]
    if args.handler_timeout is not None:
        command += ["--handler-timeout", repr(args.handler_timeout)]
    if args.lease is not None:
        command += ["--lease", repr(args.lease)]
    if slot.queue is not None:
        command += ["--queue", slot.queue]
    if given_dsn(args) is None:
        command += ["--data-dir", str(Path(args.data_dir).expanduser().resolve())]
    return command + ["-v"] * args.verbose


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    # Everything is on the command line, except the DSN: in the environment a
    # password is not shown to every user by `ps`. Inherited PGQUEUE_* (a
    # PGQUEUE_QUEUE, say) must not narrow a worker of every queue; the payload
    # limit, no option of the command line, goes on to the handlers' enqueues.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PGQUEUE_") or key == MAX_PAYLOAD_ENV
    }
    dsn = given_dsn(args)
    if dsn is not None:
        env["PGQUEUE_DSN"] = dsn
    if args.listen_dsn:
        env["PGQUEUE_LISTEN_DSN"] = args.listen_dsn
    return env


def _spawn(args: argparse.Namespace, run: RunDir, slot: WorkerSlot) -> _Started:
    # posix_spawn rather than subprocess.Popen: the worker outlives this
    # process on purpose, and a Popen object would warn that it still runs.
    pid_file, log_file = run.pid_file(slot), run.log_file(slot)
    with log_file.open("ab") as log:
        stamp = datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
        log.write(f"--- {stamp} pgqueue start: {slot.describe()}\n".encode())
        offset = log.tell()
    try:
        pid = os.posix_spawn(
            sys.executable,
            _child_command(args, slot, pid_file),
            _child_env(args),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_APPEND, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,  # its own session: Ctrl-C in this terminal does not reach it
            setsigdef=(signal.SIGINT, signal.SIGTERM),  # even if ignored here (nohup, &)
        )
    except OSError as exc:
        raise ConfigurationError(f"could not start {slot.describe()}: {exc}") from exc
    write_pid(pid_file, pid)
    return _Started(slot, pid, offset)


def _wait_ready(run: RunDir, started: list[_Started], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(started)
    while waiting:
        for item in list(waiting):
            code = item.exit_code()
            if code is not None:
                item.state = f"exited with code {code}"
                remove_pid(run.pid_file(item.slot), item.pid)
            elif item.ready(run.log_file(item.slot)):
                item.state = "started"
            else:
                continue
            waiting.remove(item)
        if waiting and time.monotonic() > deadline:
            for item in waiting:
                item.state = f"not ready after {timeout:g} s"
            return
        if waiting:
            time.sleep(_POLL)


def _check_database(args: argparse.Namespace) -> str:
    """Say which database the workers use; fail early when a given one is unusable."""
    dsn = given_dsn(args)
    if dsn is None:
        data_dir = Path(args.data_dir).expanduser().resolve()
        return (
            f"the embedded PostgreSQL in {data_dir} "
            "(started by the first worker, stopped when the last one exits)"
        )
    with open_connection(dsn) as conn:
        check_schema(conn)
    return describe_dsn(dsn)


def _start(
    args: argparse.Namespace, run: RunDir, slots: Sequence[WorkerSlot]
) -> tuple[str, list[dict[str, Any]]]:
    """Start ``slots`` unless one of them runs.

    Returns the database the workers use and one entry per slot, its
    ``state`` saying how it went.
    """
    load_app(args.app)  # a bad --app fails here, not in every log file
    running = []
    for slot in slots:
        pid = read_pid(run.pid_file(slot))
        if pid is not None and is_worker(pid, run.pid_file(slot)):
            running.append(_entry(run, slot, pid, "already running"))
    if running:
        return "", running
    where = _check_database(args)
    started = [_spawn(args, run, slot) for slot in slots]
    _wait_ready(run, started, args.timeout)
    entries = []
    for item in started:
        entry = _entry(run, item.slot, item.pid, item.state)
        if item.state != "started":
            entry["log_tail"] = log_tail(run.log_file(item.slot), item.offset)
        entries.append(entry)
    return where, entries


def _report_start(
    args: argparse.Namespace, run: RunDir, where: str, entries: list[dict[str, Any]]
) -> int:
    ok = all(entry["state"] == "started" for entry in entries)
    if args.json:
        return 0 if ok else 1
    for entry in entries:
        name = f"worker {entry['worker']}"
        if entry["state"] == "started":
            print(f"started {name}: pid {entry['pid']}")
            print(f"  pid file {entry['pid_file']}")
            print(f"  log file {entry['log_file']}")
        elif entry["state"] == "already running":
            print(
                f"pgqueue: {name} is already running (pid {entry['pid']}); not starting "
                "any worker (use `pgqueue restart`, or `pgqueue stop` first)",
                file=sys.stderr,
            )
        else:
            print(
                f"pgqueue: {name} (pid {entry['pid']}) {entry['state']}; "
                f"its log {entry['log_file']} ends with:\n{entry['log_tail']}",
                file=sys.stderr,
            )
    if any(entry["state"] == "started" for entry in entries):
        print(f"workers connect to {where}")
        hint = ["pgqueue", "stop"]
        if run.path != DEFAULT_RUN_DIR.resolve():
            hint += ["--run-dir", str(run.path)]
        print(f"stop them with: {' '.join(hint)}")
    return 0 if ok else 1


def _entry(run: RunDir, slot: WorkerSlot, pid: int | None, state: str) -> dict[str, Any]:
    return {
        "worker": slot.label,
        "queue": slot.queue,
        "pid": pid,
        "state": state,
        "pid_file": str(run.pid_file(slot)),
        "log_file": str(run.log_file(slot)),
    }


# -- stop -------------------------------------------------------------------------


def _stop(
    args: argparse.Namespace, run: RunDir, slots: Sequence[WorkerSlot]
) -> list[dict[str, Any]]:
    """Stop ``slots``; one entry per slot, its ``state`` saying what happened."""
    entries: list[dict[str, Any]] = []
    signalled: dict[int, tuple[WorkerSlot, dict[str, Any]]] = {}
    for slot in slots:
        pid_file = run.pid_file(slot)
        pid = read_pid(pid_file)
        entry = _entry(run, slot, pid, "not running")
        entries.append(entry)
        if pid is None or not is_worker(pid, pid_file):
            if pid_file.exists():
                entry["state"] = "stale pid file removed"
                remove_pid(pid_file, pid)
            continue
        # A worker asked to stop before is not signalled again: a second
        # SIGINT would make it quit at once, abandoning its running jobs.
        if not is_stopping(pid_file):
            write_pid(pid_file, pid, stopping=True)
            if not signal_process(pid, signal.SIGINT):
                entry["state"] = "stale pid file removed"
                remove_pid(pid_file, pid)
                continue
        entry["state"] = "stopping"
        signalled[pid] = (slot, entry)
    _wait_gone(run, signalled, args.timeout, "stopped")
    if args.force and any(e["state"] == "stopping" for _, e in signalled.values()):
        for pid, (_, entry) in signalled.items():
            if entry["state"] == "stopping":
                signal_process(pid, signal.SIGKILL)
        _wait_gone(run, signalled, _KILL_WAIT, "killed")
    for _, entry in signalled.values():
        if entry["state"] == "stopping":
            entry["state"] = "still running"
    return entries


def _wait_gone(
    run: RunDir,
    signalled: dict[int, tuple[WorkerSlot, dict[str, Any]]],
    timeout: float,
    state: str,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for pid, (slot, entry) in signalled.items():
            if entry["state"] == "stopping" and not is_worker(pid, run.pid_file(slot)):
                entry["state"] = state
                remove_pid(run.pid_file(slot), pid)
        if all(e["state"] != "stopping" for _, e in signalled.values()):
            return
        if time.monotonic() > deadline:
            return
        time.sleep(_POLL)


def _report_stop(args: argparse.Namespace, entries: list[dict[str, Any]]) -> int:
    stuck = [e for e in entries if e["state"] == "still running"]
    if args.json:
        return 1 if stuck else 0
    for entry in entries:
        name = f"worker {entry['worker']}"
        state = entry["state"]
        if state in ("stopped", "killed"):
            after = f" after {args.timeout:g} s" if state == "killed" else ""
            print(f"{state} {name} (pid {entry['pid']}){after}")
        elif state == "not running":
            print(f"{name} is not running (no pid file)")
        elif state == "stale pid file removed":
            print(f"{name} was not running; removed its stale pid file {entry['pid_file']}")
        else:
            print(
                f"pgqueue: {name} (pid {entry['pid']}) did not stop within {args.timeout:g} s "
                "and is still running (its job may still be running; --force kills it)",
                file=sys.stderr,
            )
    return 1 if stuck else 0


# -- the commands ---------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    """``pgqueue start``: start detached workers (``-n``), each with a pid and a log file."""
    _modes(args)  # a bad combination fails before any worker starts
    run = RunDir(args.run_dir)
    with run.locked():
        where, entries = _start(args, run, args.workers)
    if args.json:
        print_json({"run_dir": str(run.path), "workers": entries})
    return _report_start(args, run, where, entries)


def cmd_stop(args: argparse.Namespace) -> int:
    """``pgqueue stop``: SIGINT the workers (``-n``, else all in the run dir) and wait for them."""
    run = RunDir(args.run_dir)
    slots: list[WorkerSlot] = []
    entries: list[dict[str, Any]] = []
    if run.path.is_dir():  # else nothing to stop, and no directory to make
        with run.locked():
            slots = args.workers if args.workers is not None else run.slots()
            entries = _stop(args, run, slots)
    if args.json:
        print_json({"run_dir": str(run.path), "workers": entries})
    elif not slots:
        print(f"no workers found in {run.path}")
    return _report_stop(args, entries)


def cmd_restart(args: argparse.Namespace) -> int:
    """``pgqueue restart``: stop the workers (``-n``, else all in the run dir), then start them.

    With no ``-n`` and no worker in the run directory it starts one worker of
    every queue, like ``pgqueue start``. Nothing is started when a worker
    does not stop.
    """
    _modes(args)  # a bad combination fails before any worker stops
    run = RunDir(args.run_dir)
    with run.locked():
        slots = args.workers if args.workers is not None else run.slots()
        stopped = _stop(args, run, slots)
        where, started = "", list[dict[str, Any]]()
        if all(entry["state"] != "still running" for entry in stopped):
            where, started = _start(args, run, slots or [WorkerSlot(None, 0)])
    if args.json:
        print_json({"run_dir": str(run.path), "stopped": stopped, "started": started})
    code = _report_stop(args, stopped)
    if code:
        if not args.json:
            print("pgqueue: not starting any worker while one still runs", file=sys.stderr)
        return code
    return _report_start(args, run, where, started)
