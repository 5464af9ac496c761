"""A pgqueue worker in a process of its own, driven by the benchmark over stdin/stdout.

``drain``: build the worker, print ``ready``, wait for a line on stdin, run
``work_off()`` and print its counts as JSON. ``serve``: start the worker,
print ``ready`` and keep it running until stdin closes, then stop it and
print its counts (the memory scenario reads this process's RSS meanwhile).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import pgqueue

from .loading import noop


def _worker(args: argparse.Namespace) -> Any:
    kwargs: dict[str, Any] = {
        "handler": noop,
        "parallel_count": args.threads,
        "poll_interval": args.poll_interval,
    }
    if args.batch_size:
        kwargs["batch_size"] = args.batch_size
    return pgqueue.JobQueueWorker(args.dsn, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_proc")
    parser.add_argument("mode", choices=["drain", "serve"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--poll-interval", type=float, default=1.5)
    args = parser.parse_args(argv)
    worker = _worker(args)
    if args.mode == "drain":
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        stats = worker.work_off()
        elapsed = time.perf_counter() - start
        print(json.dumps({**stats.as_dict(), "elapsed": elapsed}), flush=True)
        return 0
    worker.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    worker.stop()
    print(json.dumps(worker.stats.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
