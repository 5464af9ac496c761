"""The markdown report: the targets summary, then one table per scenario with absolute numbers."""

from __future__ import annotations

from typing import Any

from .server import summary
from .stats import ratio
from .targets import ok_peers, peer_value, targets

__all__ = ["markdown", "summary_table", "targets"]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) else "n/a"


def _x(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"


def _err(data: Any) -> str | None:
    return data.get("error") if isinstance(data, dict) else "not run"


def summary_table(results: dict[str, Any]) -> str:
    """The issue-4 targets as a markdown table (also printed at the end of a run)."""
    rows = []
    for t in results.get("targets") or targets(results):
        value = t["value"]
        shown = "n/a" if value is None else (f"{value:.2f}")
        verdict = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        if t.get("partial") and t["met"] is not None:
            verdict += " (partial run)"
        rows.append([t["target"], t["measured"], shown, t["needed"], verdict])
    return _table(["Target", "Measured", "Ratio / value", "Needed", "Result"], rows)


def _enqueue(s: dict[str, Any]) -> str:
    data: Any = s.get("enqueue")
    if _err(data):
        return f"Not measured: {_err(data)}"
    copy = data.get("copy", {}).get("median")
    names = {
        "single": "`add_job_to_queue`, one job per transaction",
        "many_in_one_tx": "`add_job_to_queue` in a loop, one transaction",
        "bulk": "`add_jobs_to_queue` (bulk API)",
        "copy": "raw `COPY` into pgqueue.jobs (ceiling)",
    }
    rows = [
        [
            label,
            f"{data[k]['jobs']:,}",
            _rate(data[k]["median"]),
            _rate(data[k]["best"]),
            _x(ratio(data[k]["median"], copy)),
        ]
        for k, label in names.items()
        if k in data
    ]
    return _table(["Way in", "Jobs", "jobs/s (median)", "best", "vs COPY"], rows)


def _drain(s: dict[str, Any]) -> str:
    data: Any = s.get("drain")
    if _err(data):
        return f"Not measured: {_err(data)}"
    ceiling = s.get("ceiling") or {}
    floor = s.get("floor") or {}
    rows = []
    for value in data.values():
        if not isinstance(value, dict) or "median" not in value:
            continue
        slots = value["threads"] * value["processes"]
        table = "batch_50" if value.get("batch_size") else "batch_1"
        ref = (ceiling.get(table) or {}).get(str(slots), {}).get("jobs_per_s")
        kind = "batch" if value.get("batch_size") else "threads"
        floor_ref = (floor.get(f"{kind}_{slots}") or {}).get("median")
        if value.get("asyncio"):
            shape = f"asyncio, {value['threads']} slot(s)"
        elif value["processes"] > 1:
            shape = f"{value['processes']} processes x {value['threads']} threads"
        else:
            shape = f"{value['threads']} thread(s)"
        if value.get("batch_size"):
            shape += f", batch_size={value['batch_size']}"
        rows.append(
            [
                shape,
                f"{value['jobs']:,}",
                _rate(value["median"]),
                _rate(value["best"]),
                f"{_x(ratio(value['median'], ref))} of {table.replace('batch_', '')}-job ceiling @ {slots}",
                _x(ratio(value["median"], floor_ref)),
            ]
        )
    text = _table(
        ["Worker", "Jobs", "jobs/s (median)", "best", "vs pgbench", "vs Python's floor"], rows
    )
    note = (data.get("batch_mode") or {}).get("note")
    return text + (f"\n\n{note}." if note else "")


def _latency(s: dict[str, Any], results: dict[str, Any]) -> str:
    data: Any = s.get("latency")
    rows = []
    if not _err(data):
        rows.append(
            [
                "pgqueue",
                data["p50_ms"],
                data["p95_ms"],
                data["p99_ms"],
                data["max_ms"],
                data["count"],
            ]
        )
    for name, peer in ok_peers(results).items():
        lat = (peer.get("steps") or {}).get("latency") or {}
        if "p50_ms" in lat:
            rows.append(
                [name, lat["p50_ms"], lat["p95_ms"], lat["p99_ms"], lat["max_ms"], lat["count"]]
            )
    text = _table(["Queue", "p50 ms", "p95 ms", "p99 ms", "max ms", "jobs"], rows)
    if not _err(data):
        text += (
            f"\n\nIdle worker ({data['threads']} threads, poll every {data['poll_interval_s']:g} s, so "
            f"NOTIFY wakes it), jobs {data['spacing_ms']:g} ms apart, first {data['warmup_jobs']} "
            "jobs not counted; enqueue-commit returned to handler start, one process."
        )
    return text


def _scale(s: dict[str, Any]) -> str:
    data: Any = s.get("scale")
    if _err(data):
        return f"Not measured: {_err(data)}"
    rows = []
    for key, v in data.items():
        if not isinstance(v, dict) or "jobs_per_s" not in v:
            continue
        extra = ", ".join(
            f"{v[k]:,} {label}"
            for k, label in (("history", "finished"), ("future", "future"), ("names", "names"))
            if v.get(k)
        )
        rows.append(
            [
                key,
                f"{v['pending']:,}",
                extra or "-",
                f"{v['drained']:,}",
                _rate(v["jobs_per_s"]),
                _x(v.get("ratio_to_smallest")),
            ]
        )
    return _table(
        ["Case", "Pending (due)", "Other rows", "Drained", "jobs/s (C=4)", "vs smallest"], rows
    )


def _ceiling(s: dict[str, Any]) -> str:
    data: Any = s.get("ceiling")
    if _err(data):
        return f"Not measured: {_err(data)}"
    rows = []
    for key, per_client in data.items():
        if not key.startswith("batch_"):
            continue
        for clients, v in per_client.items():
            rows.append(
                [
                    key.replace("batch_", ""),
                    clients,
                    _rate(v["jobs_per_s"]),
                    _rate(v["tps"]),
                    f"{v['rows_deleted']:,}",
                    "yes" if v["ran_dry"] else "no",
                ]
            )
    script = "```sql\n" + str(data.get("script", "")).strip() + "\n```"
    return (
        _table(["Jobs/tx", "Clients", "jobs/s", "tps", "Rows deleted", "Ran dry"], rows)
        + "\n\n"
        + script
    )


def _floor(s: dict[str, Any]) -> str:
    data: Any = s.get("floor")
    if _err(data):
        return f"Not measured: {_err(data)}"
    ceiling = s.get("ceiling") or {}
    rows = []
    for key, value in data.items():
        if not isinstance(value, dict) or "median" not in value:
            continue
        kind, slots = key.rsplit("_", 1)
        table = "batch_50" if kind == "batch" else "batch_1"
        ref = (ceiling.get(table) or {}).get(slots, {}).get("jobs_per_s")
        rows.append(
            [
                f"{slots} thread(s)" + (", 50 jobs/tx" if kind == "batch" else ", 1 job/tx"),
                f"{value['jobs']:,}",
                _rate(value["median"]),
                _rate(value["best"]),
                f"{_x(ratio(value['median'], ref))} of {table.replace('batch_', '')}-job ceiling @ {slots}",
            ]
        )
    return (
        _table(["Python floor", "Jobs", "jobs/s (median)", "best", "vs pgbench"], rows)
        + "\n\nThreads in one process, libpq pipeline (psycopg.pq), pgqueue's transaction shape"
        " and nothing else: BEGIN + a minimal SKIP LOCKED claim + SAVEPOINT, then per claim one round"
        " trip of RELEASE + UPDATE + COMMIT + the next BEGIN, claim and SAVEPOINT"
        " (batches of no-op jobs the same, one claim and one completion per batch); see bench/floor.py."
    )


def _peers(s: dict[str, Any], results: dict[str, Any]) -> str:
    data: Any = s.get("peers")
    if _err(data):
        return f"Not measured: {_err(data)}"
    cols = [
        ("enqueue_single", "enqueue 1/tx"),
        ("enqueue_bulk", "bulk enqueue"),
        ("drain_4", "drain C=4"),
        ("drain_16", "drain C=16"),
    ]
    ours = {
        "enqueue_single": (s.get("enqueue") or {}).get("single", {}).get("median"),
        "enqueue_bulk": (s.get("enqueue") or {}).get("bulk", {}).get("median"),
        "drain_4": (s.get("drain") or {}).get("threads_4", {}).get("median"),
        "drain_16": (s.get("drain") or {}).get("threads_16", {}).get("median"),
    }
    lat = s.get("latency") or {}
    rows = [
        ["pgqueue", (results.get("machine") or {}).get("packages", {}).get("pgqueue")]
        + [_rate(ours[k]) for k, _ in cols]
        + [f"{lat.get('p50_ms')} / {lat.get('p95_ms')}"]
    ]
    ratio_rows = []
    notes = []
    for name, peer in (data or {}).items():
        if name == "config" or name == "scenario_s":
            continue
        if "steps" not in peer:
            notes.append(f"- **{name}**: not run: {peer.get('error')}")
            continue
        steps = peer["steps"]
        cells = []
        for key, _ in cols:
            step = steps.get(key) or {}
            cell = _rate(step.get("jobs_per_s")) if "error" not in step else "error"
            if step.get("capped"):
                cell += " (cap)"
            cells.append(cell)
        latency = steps.get("latency") or {}
        cells.append(
            f"{latency.get('p50_ms')} / {latency.get('p95_ms')}" if "p50_ms" in latency else "error"
        )
        rows.append([name, peer.get("version"), *cells])
        ratio_rows.append(
            [f"pgqueue / {name}", ""]
            + [_x(ratio(ours[k], peer_value(peer, k))) for k, _ in cols]
            + [""]
        )
        knobs = "; ".join(f"{k}={v}" for k, v in (peer.get("knobs") or {}).items())
        notes.append(f"- **{name} {peer.get('version')}** knobs: {knobs}")
        for key, step in steps.items():
            if isinstance(step, dict) and "error" in step:
                notes.append(f"  - {key} failed: {step['error']}")
    header = ["Queue", "Version"] + [label for _, label in cols] + ["latency p50 / p95 ms"]
    text = _table(header, rows + ratio_rows)
    config = data.get("config") or {}
    text += (
        f"\n\nSizes: {config.get('single'):,} single enqueues, {config.get('bulk'):,} bulk, "
        f"{config.get('drain'):,} queued for each drain; each peer step stops after "
        f"{config.get('step_cap')} s and reports the rate so far (marked cap). pgqueue's numbers are "
        "medians of its own scenarios above.\n\n" + "\n".join(notes)
    )
    return text


def _run_kind(meta: dict[str, Any]) -> str:
    """The run's kind for the report's title: full or quick, and the scenarios of --only."""
    kind = f"{meta['mode']} run"
    if meta.get("only"):
        kind += f", only {meta['only']}"
    return kind


def _paired(s: dict[str, Any]) -> str:
    data: Any = s.get("paired")
    if _err(data):
        return f"Not measured: {_err(data)}"
    rows = []
    for key, value in data.items():
        if not key.startswith("threads_"):
            continue
        threads = key.replace("threads_", "")
        for i, r in enumerate(value["rounds"], 1):
            rows.append(
                [
                    threads,
                    str(i),
                    " → ".join(
                        {"peer": value["peer"], "unrecorded": "no start records"}.get(part, part)
                        for part in r["order"]
                    ),
                    _rate(r["ceiling"]),
                    _rate(r["pgqueue"]),
                    _rate(r.get("unrecorded")),
                    f"{value['peer']} {_rate(r['peer'])}",
                    _x(r["to_ceiling"]),
                    _x(r["to_peer"]),
                    f"{_x(r.get('unrecorded_to_ceiling'))} / {_x(r.get('unrecorded_to_peer'))}",
                ]
            )
        rows.append(
            [
                threads,
                "median",
                "",
                _rate(value["ceiling"]),
                _rate(value["pgqueue"]),
                _rate(value.get("unrecorded")),
                f"{value['peer']} {_rate(value['peer_rate'])}",
                f"**{_x(value['to_ceiling'])}**",
                f"**{_x(value['to_peer'])}**",
                f"{_x(value.get('unrecorded_to_ceiling'))} / {_x(value.get('unrecorded_to_peer'))}",
            ]
        )
    header = [
        "Threads",
        "Round",
        "Order",
        "Ceiling (1 job/tx)",
        "pgqueue",
        "pgqueue, no start records",
        "Peer",
        "/ ceiling",
        "/ peer",
        "No start records: / ceiling, / peer",
    ]
    return (
        _table(header, rows)
        + f"\n\nEach round runs the pgbench 1-job ceiling ({data['seconds']} s at as many clients"
        f" as threads), pgqueue's default-mode drain ({data['jobs']:,} jobs), the same drain"
        " without start records and the best peer of scenario 6 at the same concurrency, back to"
        " back, the order reversed every other round. The ratios are per round; the targets read"
        " their median. Scenarios 2, 5 and 6 measure the same things minutes apart, and these"
        " machines drift by up to 30% within an hour.\n\n*No start records* is an ablation, not"
        " a mode pgqueue has: the worker writes no start record per claim, so an attempt whose"
        " handler kills its process would not be counted (see the README's *Jobs that break"
        " their workers*). The difference from pgqueue is what crash accounting costs; the rate"
        " without it is what the rest of the worker reaches."
    )


def _memory(s: dict[str, Any]) -> str:
    data: Any = s.get("memory")
    if _err(data):
        return f"Not measured: {_err(data)}"
    rows = [[f"{jobs:,}", mib] for jobs, mib in data["samples"]]
    counts = data.get("worker_stats") or {}
    split = ", ".join(f"{mode} {c['completed']:,}" for mode, c in counts.items())
    head = (
        f"One worker process: a default-mode worker of {data['threads']} threads and a batch-mode "
        f"one of {data['batch_threads']} threads (batches of {data['batch_size']}), each on a "
        f"queue of its own ({data['batch_share']:.0%} of the jobs for the batch-mode one), "
        f"fed {data['jobs_done']:,} jobs in {data['elapsed_s']} s "
        f"({data['jobs_per_s']} jobs/s; completed: {split or 'not reported'})"
        f"{' (time cap hit before ' + format(data['jobs_target'], ',') + ')' if data['capped'] else ''}. "
        f"Idle RSS {data['idle_rss_mib']} MiB; growth {data['growth_from_idle_mib']} MiB from idle, "
        f"{data['growth_after_warmup_mib']} MiB after the first {data['warm_at_jobs']:,} jobs.\n\n"
    )
    return head + _table(["Jobs done", "RSS MiB"], rows)


def markdown(results: dict[str, Any], charts: list[str]) -> str:
    """The whole report."""
    meta = results["meta"]
    machine = results.get("machine", {})
    settings = (results.get("server") or {}).get("settings", {})
    s = results.get("scenarios", {})
    git = machine.get("git") or {}
    parts = [
        f"# pgqueue benchmark, {meta['date']} ({_run_kind(meta)}, {meta.get('runtime_s')} s)",
        f"Postgres {settings.get('server_version')} "
        f"({'embedded, temp dir' if (results.get('server') or {}).get('embedded') else 'given by --dsn'}): "
        f"{summary(settings, sep=', ')}. "
        f"Machine: {machine.get('nproc')} cores ({machine.get('cpu_model')}), {machine.get('memory_gib')} GiB, "
        f"Python {machine.get('python')}, pgqueue {machine.get('packages', {}).get('pgqueue')} "
        f"(commit {str(git.get('commit'))[:10]}{', uncommitted changes' if git.get('dirty') else ''}). "
        f"Postgres and the workers share the cores; every figure is from this one run, and repeats "
        f"(pgqueue: {meta['plan']['repeats']} per case, median shown) vary on a shared machine.",
        "## Targets (issue 4)",
        summary_table(results),
        "## 1. Enqueue",
        _enqueue(s),
        "## 2. Drain (no-op jobs, until the queue is empty)",
        _drain(s),
        "## 3. Idle latency (enqueue commit to handler start)",
        _latency(s, results),
        "## 4. Scale (drain rate with big tables)",
        _scale(s),
        "## 5. The ceiling (pgbench, minimal SKIP LOCKED dequeue-and-delete)",
        _ceiling(s),
        "## 5b. Python's floor (pgqueue's transaction shape, no bookkeeping)",
        _floor(s),
        "## 6. Peers (same server, separate databases)",
        _peers(s, results),
        "## 7. Worker memory",
        _memory(s),
        "## 8. Side by side (ceiling, pgqueue with and without start records, the best peer)",
        _paired(s),
    ]
    if charts:
        parts.append("## Charts")
        parts.append("\n".join(f"![{name}]({name})" for name in charts))
    return "\n\n".join(parts) + "\n"
