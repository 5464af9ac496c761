"""Scenario 8, side by side: pgqueue's default-mode drain, the pgbench 1-job ceiling and the best
peer's drain, back to back in rounds, so that each ratio compares rates taken within a minute.

Scenarios 2, 5 and 6 take their rates minutes apart, and these machines drift (the same code
measured 30% apart within an hour): their ratios carry the drift. Here each round runs, per
concurrency, the parts one after the other, pgqueue in the middle and the order reversed every
other round, so that a steady drift moves the neighbours alike. The ratios are taken per round;
the targets read their median.

Beside pgqueue runs the same drain without start records (``without_start_records``: an
ablation, not a mode pgqueue has), so that each round also says what crash accounting costs
and how far the rest of the worker gets without it.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import ceiling, peers
from .drain import drain_threads, without_start_records
from .loading import bulk_enqueue, vacuum_analyze
from .plan import Plan
from .server import Server
from .targets import best_peer

#: The peer measured when scenario 6 did not run (or no peer drained): the best one on record.
DEFAULT_PEER = "pgqueuer"

#: The two pgqueue drains of a round, each with the prefix of its ratios' keys.
_DRAINS = (("", "pgqueue"), ("unrecorded_", "unrecorded"))
#: What a concurrency's result gives the median of, beside the peer's rate (``peer_rate``).
_MEDIANS = (
    "ceiling",
    "pgqueue",
    "to_ceiling",
    "to_peer",
    "unrecorded",
    "unrecorded_to_ceiling",
    "unrecorded_to_peer",
)


def _peer_for(concurrency: int, peer_results: dict[str, Any] | None) -> str:
    """The peer with the best drain at ``concurrency`` in scenario 6, or DEFAULT_PEER."""
    name, _ = best_peer({"scenarios": {"peers": peer_results or {}}}, f"drain_{concurrency}")
    return name or DEFAULT_PEER


def _ceiling(server: Server, pgbench: Path, plan: Plan, concurrency: int) -> float:
    with ceiling.workspace(server) as (dsn, script):
        measured = ceiling.measure(pgbench, dsn, script, plan, clients=concurrency, batch=1)
    if measured["ran_dry"]:
        raise RuntimeError("the ceiling ran dry: preload more rows")
    return float(measured["jobs_per_s"])


def _pgqueue(server: Server, plan: Plan, concurrency: int) -> float:
    with server.database(f"paired_{concurrency}") as dsn:
        bulk_enqueue(dsn, plan.drain_jobs)
        vacuum_analyze(dsn)
        rate, _ = drain_threads(dsn, concurrency)
    return rate


def _unrecorded(server: Server, plan: Plan, concurrency: int) -> float:
    with without_start_records():
        return _pgqueue(server, plan, concurrency)


def _peer(server: Server, plan: Plan, name: str, concurrency: int, log: Any) -> float:
    step = f"drain_{concurrency}"
    result = peers.run_one(server, name, plan, lambda _: None, steps=[step])
    data = (result.get("steps") or {}).get(step) or {}
    if "jobs_per_s" not in data:
        raise RuntimeError(f"{name} {step}: {data.get('error') or result.get('error')}")
    if data.get("capped"):
        log(f"  (the {name} drain hit its {plan.peer_step_cap:g} s cap: the rate so far)")
    return float(data["jobs_per_s"])


def run(
    server: Server, plan: Plan, log: Any, peer_results: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Per concurrency, ``plan.repeats`` rounds of ceiling, pgqueue, pgqueue without start
    records and peer back to back."""
    pgbench = ceiling.find_pgbench(server)
    chosen = {c: _peer_for(c, peer_results) for c in plan.paired_concurrency}
    rounds: dict[int, list[dict[str, Any]]] = {c: [] for c in plan.paired_concurrency}
    for repeat in range(plan.repeats):
        for c in plan.paired_concurrency:
            name = chosen[c]
            runs: dict[str, Callable[[], float]] = {
                "ceiling": functools.partial(_ceiling, server, pgbench, plan, c),
                "pgqueue": functools.partial(_pgqueue, server, plan, c),
                "unrecorded": functools.partial(_unrecorded, server, plan, c),
                "peer": functools.partial(_peer, server, plan, name, c, log),
            }
            order = ["ceiling", "pgqueue", "unrecorded", "peer"]
            if repeat % 2:
                order.reverse()
            rates: dict[str, float] = {part: runs[part]() for part in order}
            for prefix, part in _DRAINS:
                rates[f"{prefix}to_ceiling"] = rates[part] / rates["ceiling"]
                rates[f"{prefix}to_peer"] = rates[part] / rates["peer"]
            rounds[c].append({"order": order, **rates})
            log(
                f"  C={c:<2} round {repeat + 1}: ceiling {rates['ceiling']:>6.0f}  pgqueue "
                f"{rates['pgqueue']:>6.0f}  (no start records {rates['unrecorded']:>6.0f})  "
                f"{name} {rates['peer']:>6.0f} jobs/s  ->  {rates['to_ceiling']:.2f} of the "
                f"ceiling, {rates['to_peer']:.2f}x {name} (no start records "
                f"{rates['unrecorded_to_ceiling']:.2f}, {rates['unrecorded_to_peer']:.2f}x)"
            )
    result: dict[str, Any] = {
        "seconds": plan.ceiling_seconds,
        "jobs": plan.drain_jobs,
        "note": "per round: pgbench 1-job ceiling, pgqueue default mode, the same without start "
        "records (an ablation), peer drain, back to back (the order reversed every other round); "
        "ratios per round, median reported",
    }
    for c, measured in rounds.items():
        medians = {key: statistics.median(r[key] for r in measured) for key in _MEDIANS}
        result[f"threads_{c}"] = {
            "peer": chosen[c],
            "rounds": measured,
            **medians,
            "peer_rate": statistics.median(r["peer"] for r in measured),
        }
    return result
