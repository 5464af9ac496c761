"""``python -m bench``: pgqueue's benchmark against the pgbench ceiling and its peers, in one run.

Starts its own embedded Postgres (or uses --dsn), runs the scenarios, and
writes bench/results/<date>.json, <date>.md and the charts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    ceiling,
    charts,
    drain,
    enqueue,
    floor,
    latency,
    memory,
    paired,
    peers,
    report,
    scale,
)
from .plan import Plan, make_plan
from .server import Server, embedded_server, given_server, machine_info, summary

SCENARIOS: dict[str, Callable[[Server, Plan, Any], dict[str, Any]]] = {
    "enqueue": enqueue.run,
    "drain": drain.run,
    "latency": latency.run,
    "scale": scale.run,
    "ceiling": ceiling.run,
    "floor": floor.run,
    "peers": peers.run,
    "paired": paired.run,
    "memory": memory.run,
}

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="pgqueue's benchmark: enqueue, drain, latency, scale, the pgbench "
        "ceiling, peers and worker memory, in one run on one Postgres server.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, one repeat: under 3 minutes"
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("PGQUEUE_BENCH_DSN"),
        help="use this server instead of starting an embedded one; databases are created "
        "and dropped on it (env PGQUEUE_BENCH_DSN)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run (of: " + ", ".join(SCENARIOS) + "); "
        "'peers:NAME' runs one peer only",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    return parser.parse_args(argv)


def _selection(only: str) -> tuple[list[str], list[str] | None]:
    if not only:
        return list(SCENARIOS), None
    names: list[str] = []
    peer_names: list[str] | None = None
    for item in (part.strip() for part in only.split(",")):
        if not item:
            continue
        scenario = item
        if item.startswith("peers:"):
            peer_names = [*(peer_names or []), item.split(":", 1)[1]]
            scenario = "peers"
        if scenario not in SCENARIOS:
            raise SystemExit(f"unknown scenario {item!r}; choose from {', '.join(SCENARIOS)}")
        if scenario not in names:
            names.append(scenario)
    return [name for name in SCENARIOS if name in names], peer_names


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected scenarios and return everything measured."""
    plan = make_plan(args.quick)
    selected, peer_names = _selection(args.only)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "date": dt.date.today().isoformat(),
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "scenarios": selected,
            "only": args.only,
            "argv": sys.argv[1:],
            "plan": dataclasses.asdict(plan),
        },
        "machine": machine_info(),
        "scenarios": {},
    }
    server_cm = given_server(args.dsn) if args.dsn else embedded_server()
    with server_cm as server:
        settings = server.settings()
        results["server"] = {"embedded": server.embedded, "settings": settings}
        where = "embedded, temp dir" if server.embedded else "--dsn"
        _log(f"Postgres {settings['server_version']}: {summary(settings)} ({where})")
        machine = results["machine"]
        _log(
            f"Machine: {machine['nproc']} cores ({machine['cpu_model']}), Python "
            f"{machine['python']}, pgqueue {machine['packages'].get('pgqueue')}"
        )
        for name in selected:
            _log(f"== {name}")
            t0 = time.perf_counter()
            try:
                if name == "peers":
                    data = peers.run(server, plan, _log, peer_names)
                elif name == "paired":
                    data = paired.run(server, plan, _log, results["scenarios"].get("peers"))
                elif name == "memory":
                    left = plan.time_budget - (time.perf_counter() - started) - 10
                    cap = max(15.0, min(plan.memory_cap, left))
                    data = memory.run(server, dataclasses.replace(plan, memory_cap=cap), _log)
                else:
                    data = SCENARIOS[name](server, plan, _log)
            except Exception as exc:
                traceback.print_exc()
                data = {"error": f"{type(exc).__name__}: {exc}"}
                _log(f"  {name} failed: {data['error']}")
            data["scenario_s"] = round(time.perf_counter() - t0, 1)
            results["scenarios"][name] = data
            _log(f"  ({data['scenario_s']} s)")
    results["meta"]["runtime_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return results


def write(results: dict[str, Any], out: Path, *, partial: bool) -> list[Path]:
    """The JSON, the markdown report and the charts; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = results["meta"]["date"]
    if results["meta"]["mode"] == "quick":
        stem += "-quick"
    if partial:
        stem += "-partial"
    results["targets"] = report.targets(results)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    written = [json_path]
    written += charts.draw(results, out, stem)
    md_path = out / f"{stem}.md"
    md_path.write_text(report.markdown(results, [p.name for p in written[1:]]))
    written.append(md_path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = run(args)
    written = write(results, args.out, partial=bool(args.only))
    _log("")
    _log(report.summary_table(results))
    _log("")
    _log(f"Runtime {results['meta']['runtime_s']} s. Wrote:")
    for path in written:
        _log(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
