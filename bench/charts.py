"""PNG charts (matplotlib, Agg): throughput against concurrency, and against backlog size."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .targets import ok_peers, peer_value


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 (optional: the bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _concurrency(results: dict[str, Any], path: Path) -> bool:
    s = results.get("scenarios", {})
    series: list[tuple[str, list[int], list[float], str]] = []
    drain = s.get("drain") or {}
    for prefix, label, style in (
        ("threads_", "pgqueue (1 job/tx)", "o-"),
        ("batch_", "pgqueue batch", "s-"),
    ):
        points = sorted(
            (v["threads"], v["median"])
            for k, v in drain.items()
            if k.startswith(prefix) and isinstance(v, dict) and v.get("median")
        )
        if points:
            series.append((label, [p[0] for p in points], [p[1] for p in points], style))
    for key, label in (
        ("batch_1", "pgbench ceiling, 1 job/tx"),
        ("batch_50", "pgbench ceiling, 50 jobs/tx"),
    ):
        per_client = (s.get("ceiling") or {}).get(key) or {}
        points = sorted((int(c), v["jobs_per_s"]) for c, v in per_client.items())
        if points:
            series.append(
                (
                    label,
                    [p[0] for p in points],
                    [p[1] for p in points],
                    "k--" if key == "batch_1" else "k:",
                )
            )
    for name, peer in ok_peers(results).items():
        points = sorted(
            (int(k.split("_")[1]), peer_value(peer, k))
            for k in (peer.get("steps") or {})
            if k.startswith("drain_") and peer_value(peer, k) is not None
        )
        if points:
            series.append((name, [p[0] for p in points], [float(p[1] or 0) for p in points], "^-"))
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    for label, xs, ys, style in series:
        ax.plot(xs, ys, style, label=label)
    for key, value in drain.items():
        if key.startswith("processes_") and isinstance(value, dict) and value.get("median"):
            slots = value["threads"] * value["processes"]
            label = f"pgqueue {value['processes']} processes x {value['threads']} threads"
            ax.plot([slots], [value["median"]], "D", markersize=8, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([1, 2, 4, 8, 16])
    ax.set_xticklabels(["1", "2", "4", "8", "16"])
    ax.set_xlabel("concurrency (threads / async slots / pgbench clients)")
    ax.set_ylabel("jobs/s (log)")
    ax.set_title(
        f"Drain throughput vs concurrency ({results['meta']['date']}, {results['meta']['mode']})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _backlog(results: dict[str, Any], path: Path) -> bool:
    scale = (results.get("scenarios") or {}).get("scale") or {}
    entries = [v for v in scale.values() if isinstance(v, dict) and "jobs_per_s" in v]
    pending = sorted((v["pending"], v["jobs_per_s"]) for v in entries if v.get("kind") == "pending")
    if not pending:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot([p[0] for p in pending], [p[1] for p in pending], "o-", label="pending backlog")
    markers = {"history": "s", "future": "D", "names": "^"}
    for v in entries:
        kind = v.get("kind")
        if kind not in markers:
            continue
        rows = v["pending"] + v.get("history", 0) + v.get("future", 0)
        label = {
            "history": f"{v.get('history', 0):,} finished + {v['pending']:,} pending",
            "future": f"{v.get('future', 0):,} future + {v['pending']:,} due",
            "names": f"{v['pending']:,} pending over {v.get('names')} names",
        }[kind]
        ax.plot([rows], [v["jobs_per_s"]], markers[kind], markersize=9, label=label)
    base = pending[0][1]
    ax.axhline(base * 0.8, color="grey", linestyle=":", label="80% of the smallest backlog's rate")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("rows in pgqueue.jobs (log)")
    ax.set_ylabel("jobs/s (4 threads)")
    ax.set_title(
        f"Drain throughput vs backlog size ({results['meta']['date']}, {results['meta']['mode']})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Both charts that have data; matplotlib missing means no charts, said on stderr."""
    try:
        _pyplot()
    except ImportError as exc:
        print(f"no charts: matplotlib is not installed ({exc})", file=sys.stderr)
        return []
    written = []
    for suffix, fn in (("concurrency", _concurrency), ("backlog", _backlog)):
        path = out / f"{stem}-{suffix}.png"
        if fn(results, path):
            written.append(path)
    return written
