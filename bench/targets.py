"""The issue-4 targets as ratios measured in this run, each marked met / not met (never asserted)."""

from __future__ import annotations

from typing import Any

from .stats import ratio

#: RSS growth after warm-up that still counts as "no growth".
RSS_TOLERANCE_MIB = 5.0


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def ok_peers(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Peers that produced steps, by name."""
    peers = _get(results, "scenarios", "peers") or {}
    return {
        name: value
        for name, value in peers.items()
        if isinstance(value, dict) and isinstance(value.get("steps"), dict)
    }


def peer_value(peer: dict[str, Any], step: str, field: str = "jobs_per_s") -> float | None:
    value = _get(peer, "steps", step, field)
    return float(value) if isinstance(value, (int, float)) else None


def best_peer(results: dict[str, Any], step: str) -> tuple[str | None, float | None]:
    """The peer with the highest ``step`` rate, and that rate."""
    best: tuple[str | None, float | None] = (None, None)
    for name, peer in ok_peers(results).items():
        value = peer_value(peer, step)
        if value is not None and (best[1] is None or value > best[1]):
            best = (name, value)
    return best


def _fmt(value: float | None, unit: str = "/s") -> str:
    if value is None:
        return "n/a"
    if unit == "/s":
        return f"{value / 1000:.1f}k/s" if value >= 1000 else f"{value:.0f}/s"
    return f"{value:.2f} {unit}"


def _entry(
    target: str, measured: str, value: float | None, needed: float, *, lower_is_better: bool = False
) -> dict[str, Any]:
    if value is None:
        met = None
    elif lower_is_better:
        met = value < needed
    else:
        met = value >= needed
    return {"target": target, "measured": measured, "value": value, "needed": needed, "met": met}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of issue 4 with the numbers behind it."""
    s = results.get("scenarios", {})
    quick = _get(results, "meta", "mode") == "quick"
    out: list[dict[str, Any]] = []
    d4 = _get(s, "drain", "threads_4", "median")
    d16 = _get(s, "drain", "threads_16", "median")
    b16 = _get(s, "drain", "batch_16", "median")
    c1_4 = _get(s, "ceiling", "batch_1", "4", "jobs_per_s")
    c1_16 = _get(s, "ceiling", "batch_1", "16", "jobs_per_s")
    c50_16 = _get(s, "ceiling", "batch_50", "16", "jobs_per_s")
    peer4, best4 = best_peer(results, "drain_4")
    peer16, best16 = best_peer(results, "drain_16")
    out.append(
        _default_mode(
            s,
            "Default mode, 4 threads >= 70% of the 1-job ceiling at 4 clients",
            4,
            "to_ceiling",
            d4,
            c1_4,
            "ceiling",
            0.7,
        )
    )
    out.append(
        _default_mode(
            s,
            "Default mode, 4 threads >= 1.5x the best peer at concurrency 4",
            4,
            "to_peer",
            d4,
            best4,
            peer4 or "no peer",
            1.5,
        )
    )
    out.append(
        _default_mode(
            s,
            "Default mode, 16 threads >= 80% of the 1-job ceiling at 16 clients",
            16,
            "to_ceiling",
            d16,
            c1_16,
            "ceiling",
            0.8,
        )
    )
    available = _get(s, "drain", "batch_mode", "available")
    batch_note = " (batch mode not available yet)" if available is False else ""
    out.append(
        _entry(
            "Batch mode, 16 threads >= 2x the best peer at concurrency 16",
            f"{_fmt(b16)} vs {peer16 or 'no peer'} {_fmt(best16)}{batch_note}",
            ratio(b16, best16),
            2.0,
        )
    )
    out.append(
        _entry(
            "Batch mode, 16 threads >= 40% of the 50-job ceiling at 16 clients",
            f"{_fmt(b16)} vs ceiling {_fmt(c50_16)}{batch_note}",
            ratio(b16, c50_16),
            0.4,
        )
    )
    bulk = _get(s, "enqueue", "bulk", "median")
    copy = _get(s, "enqueue", "copy", "median")
    single = _get(s, "enqueue", "single", "median")
    bulk_peer, bulk_best = best_peer(results, "enqueue_bulk")
    single_peer, single_best = best_peer(results, "enqueue_single")
    out.append(
        _entry(
            "Bulk enqueue >= 2x the best peer's bulk API",
            f"{_fmt(bulk)} vs {bulk_peer or 'no peer'} {_fmt(bulk_best)}",
            ratio(bulk, bulk_best),
            2.0,
        )
    )
    out.append(
        _entry(
            "Bulk enqueue >= 70% of a raw COPY",
            f"{_fmt(bulk)} vs COPY {_fmt(copy)}",
            ratio(bulk, copy),
            0.7,
        )
    )
    out.append(
        _entry(
            "Single enqueue (1 job/tx) >= the best peer's",
            f"{_fmt(single)} vs {single_peer or 'no peer'} {_fmt(single_best)}",
            ratio(single, single_best),
            1.0,
        )
    )
    p50 = _get(s, "latency", "p50_ms")
    p95 = _get(s, "latency", "p95_ms")
    out.append(_entry("Idle latency p50 < 3 ms", _fmt(p50, "ms"), p50, 3.0, lower_is_better=True))
    out.append(_entry("Idle latency p95 < 5 ms", _fmt(p95, "ms"), p95, 5.0, lower_is_better=True))
    out.append(_latency_vs_peers(results, p50, p95))
    out.extend(_scale_targets(s, quick))
    out.append(_memory_target(s))
    return out


def _default_mode(
    s: dict[str, Any],
    target: str,
    threads: int,
    key: str,
    ours: float | None,
    theirs: float | None,
    label: str,
    needed: float,
) -> dict[str, Any]:
    """A default-mode row: the side-by-side median (scenario 8) when it ran, else scenarios 2/5/6.

    Both are shown when both exist: the scenarios' rates are minutes apart, the rounds' are not.
    """
    apart = ratio(ours, theirs)
    apart_text = f"{_fmt(ours)} vs {label} {_fmt(theirs)}"
    paired = _get(s, "paired", f"threads_{threads}")
    if not isinstance(paired, dict) or not isinstance(paired.get(key), (int, float)):
        return _entry(target, apart_text, apart, needed)
    rounds = [r[key] for r in paired["rounds"]]
    other = "ceiling" if key == "to_ceiling" else "peer_rate"
    name = "ceiling" if key == "to_ceiling" else paired["peer"]
    measured = (
        f"side by side: {_fmt(paired['pgqueue'])} vs {name} {_fmt(paired[other])}, median of "
        f"{len(rounds)} round{'s' if len(rounds) > 1 else ''} ({', '.join(f'{x:.2f}' for x in rounds)})"
    )
    if apart is not None:
        measured += f"; minutes apart: {apart_text} = {apart:.2f}"
    unrecorded = paired.get(f"unrecorded_{key}")
    if isinstance(unrecorded, (int, float)):
        measured += f"; without start records (an ablation): {unrecorded:.2f}"
    return _entry(target, measured, float(paired[key]), needed)


def _latency_vs_peers(
    results: dict[str, Any], p50: float | None, p95: float | None
) -> dict[str, Any]:
    known: dict[str, tuple[float, float]] = {}
    for name, peer in ok_peers(results).items():
        peer_p50 = peer_value(peer, "latency", "p50_ms")
        peer_p95 = peer_value(peer, "latency", "p95_ms")
        if peer_p50 and peer_p95:
            known[name] = (peer_p50, peer_p95)
    text = ", ".join(f"{n} {a:.2f}/{b:.2f}" for n, (a, b) in known.items())
    value: float | None = None
    if p50 is not None and p95 is not None and known:
        # The worst margin over all peers and both percentiles: < 1 means below every peer.
        value = max(max(p50 / a, p95 / b) for a, b in known.values())
    entry = _entry(
        "Idle latency p50 and p95 below every peer's",
        f"pgqueue {_fmt(p50, 'ms')} / {_fmt(p95, 'ms')} vs {text or 'no peer'}",
        value,
        1.0,
        lower_is_better=True,
    )
    return entry


def _scale_targets(s: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    scale = s.get("scale") or {}
    pending = sorted(
        (v for k, v in scale.items() if k.startswith("pending_") and isinstance(v, dict)),
        key=lambda v: v.get("pending", 0),
    )
    history = next(
        (v for k, v in scale.items() if k.startswith("history_") and isinstance(v, dict)), None
    )
    out = []
    largest = pending[-1] if pending else {}
    history = history or {}
    size = f"{largest['pending']:,}" if largest else "10^6"
    note = " (quick run: smaller backlog)" if quick else ""
    base = pending[0]["jobs_per_s"] if pending else None
    out.append(
        _entry(
            "Scale: drain rate with 10^6 pending >= 80% of the rate with 10^4",
            f"{size} pending: {_fmt(largest.get('jobs_per_s'))} vs {_fmt(base)}{note}",
            largest.get("ratio_to_smallest"),
            0.8,
        )
        | {"partial": quick}
    )
    hsize = f"{history['history']:,}" if history else "10^6"
    out.append(
        _entry(
            "Scale: drain rate with 10^6 history rows >= 80% of the rate with 10^4",
            f"{hsize} history rows: {_fmt(history.get('jobs_per_s'))} vs {_fmt(base)}{note}",
            history.get("ratio_to_smallest"),
            0.8,
        )
        | {"partial": quick}
    )
    return out


def _memory_target(s: dict[str, Any]) -> dict[str, Any]:
    mem = s.get("memory") or {}
    growth = mem.get("growth_after_warmup_mib")
    measured = "n/a"
    if growth is not None:
        partial = " (time cap hit)" if mem.get("capped") else ""
        measured = (
            f"idle {mem['idle_rss_mib']} MiB, {mem['warm_rss_mib']} MiB after "
            f"{mem['warm_at_jobs']:,} jobs, {mem['final_rss_mib']} MiB after "
            f"{mem['jobs_done']:,} jobs{partial}: +{growth} MiB"
        )
    return _entry(
        f"Worker RSS reported; no growth (<= {RSS_TOLERANCE_MIB:g} MiB after warm-up) over 10^6 jobs",
        measured,
        growth,
        RSS_TOLERANCE_MIB,
        lower_is_better=True,
    ) | {
        "met": None if growth is None else growth <= RSS_TOLERANCE_MIB,
        "partial": bool(mem.get("capped")),
    }
