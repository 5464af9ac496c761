"""Scenario 6, peers: the same steps on procrastinate, pgqueuer, chancy and oban, each in its own
process and database on the same server. A peer that is missing, fails or hangs is recorded and skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .peer_run import ADAPTERS
from .plan import Plan
from .server import Server

_ROOT = Path(__file__).resolve().parent.parent


def peer_config(plan: Plan) -> dict[str, Any]:
    """The sizes handed to every peer: pgqueue's own drain backlog and latency settings."""
    return {
        "single": plan.peer_single,
        "bulk": plan.peer_bulk,
        "drain": plan.peer_drain,
        "concurrency": list(plan.peer_concurrency),
        "latency_jobs": plan.peer_latency_jobs,
        "latency_spacing": plan.latency_spacing,
        "latency_poll_interval": plan.latency_poll_interval,
        "latency_concurrency": plan.latency_threads,
        "step_cap": plan.peer_step_cap,
    }


def _pump(stream: IO[str], lines: list[str], log: Any) -> None:
    for line in stream:
        lines.append(line)
        if line.startswith("PROGRESS"):
            log("  " + line[len("PROGRESS") :].strip())


def run_one(
    server: Server, peer: str, plan: Plan, log: Any, *, steps: list[str] | None = None
) -> dict[str, Any]:
    """One peer in a subprocess with a timeout (only ``steps``, if given): its RESULT line, or why
    there is none."""
    config = peer_config(plan) | ({"steps": steps} if steps else {})
    with server.database(f"peer_{peer}", pgqueue_schema=False) as dsn:
        command = [
            sys.executable,
            "-m",
            "bench.peer_run",
            peer,
            "--dsn",
            dsn,
            "--config",
            json.dumps(config),
        ]
        started = time.perf_counter()
        child = subprocess.Popen(
            command, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        out: list[str] = []
        err: list[str] = []
        assert child.stdout is not None
        assert child.stderr is not None
        pumps = [
            threading.Thread(target=_pump, args=(child.stdout, out, log), daemon=True),
            threading.Thread(target=_pump, args=(child.stderr, err, lambda _: None), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        try:
            child.wait(timeout=plan.peer_timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            for pump in pumps:
                pump.join(timeout=5)
            return {
                "error": f"timed out after {plan.peer_timeout:.0f} s",
                "stderr_tail": "".join(err)[-2000:],
            }
        for pump in pumps:
            pump.join(timeout=5)
        elapsed = time.perf_counter() - started
    results = [line for line in out if line.startswith("RESULT ")]
    if child.returncode != 0 or not results:
        return {
            "error": f"exited with {child.returncode} and no result",
            "stderr_tail": "".join(err)[-2000:],
        }
    result: dict[str, Any] = json.loads(results[-1][len("RESULT ") :])
    result["elapsed_s"] = round(elapsed, 1)
    step_errors = [
        key
        for key, value in result.get("steps", {}).items()
        if isinstance(value, dict) and "error" in value
    ]
    if step_errors:
        result["stderr_tail"] = "".join(err)[-2000:]
    return result


def run(server: Server, plan: Plan, log: Any, only: list[str] | None = None) -> dict[str, Any]:
    """Every peer (or those in ``only``), one after the other."""
    results: dict[str, Any] = {"config": peer_config(plan)}
    for peer in ADAPTERS:
        if only and peer not in only:
            continue
        log(f"  peer {peer}")
        try:
            results[peer] = run_one(server, peer, plan, log)
        except Exception as exc:  # never let one peer break the run
            results[peer] = {"error": f"{type(exc).__name__}: {exc}"}
        if "error" in results[peer]:
            log(f"  peer {peer}: {results[peer]['error']}")
        else:
            log(f"  peer {peer} {results[peer].get('version')}: knobs {results[peer].get('knobs')}")
    return results
