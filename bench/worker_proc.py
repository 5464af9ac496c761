"""A pgqueue worker in a process of its own, driven by the benchmark over stdin/stdout.

``drain``: build the worker, print ``ready``, wait for a line on stdin, run
``work_off()`` and print its counts as JSON. ``serve``: start the worker (and,
with ``--batch-threads``, a batch-mode worker of ``--batch-size`` beside it, on
queue ``batch``, the default-mode one then on queue ``default``), print
``ready`` and keep them running until stdin closes, then stop them and print
their counts (the memory scenario reads this process's RSS meanwhile).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import pgqueue

from .loading import noop


def _worker(
    args: argparse.Namespace, threads: int, batch_size: int, queues: list[str] | None = None
) -> Any:
    kwargs: dict[str, Any] = {
        "handler": noop,
        "parallel_count": threads,
        "poll_interval": args.poll_interval,
        "queues": queues,
    }
    if batch_size:
        kwargs["batch_size"] = batch_size
    return pgqueue.JobQueueWorker(args.dsn, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_proc")
    parser.add_argument("mode", choices=["drain", "serve"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--poll-interval", type=float, default=1.5)
    parser.add_argument("--batch-threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "drain":
        worker = _worker(args, args.threads, args.batch_size)
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        stats = worker.work_off()
        elapsed = time.perf_counter() - start
        print(json.dumps({**stats.as_dict(), "elapsed": elapsed}), flush=True)
        return 0
    if args.batch_threads:
        workers = {
            "default": _worker(args, args.threads, 0, ["default"]),
            "batch": _worker(args, args.batch_threads, args.batch_size, ["batch"]),
        }
    else:
        workers = {"default": _worker(args, args.threads, 0)}
    for worker in workers.values():
        worker.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    for worker in workers.values():
        worker.stop()
    print(json.dumps({mode: w.stats.as_dict() for mode, w in workers.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
