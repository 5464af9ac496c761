"""How big each scenario is in the full run and in --quick, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Plan:
    """Sizes, repeats and time caps of one benchmark run."""

    quick: bool
    #: Repeats of the pgqueue throughput and latency scenarios (median and best reported).
    repeats: int
    # 1. enqueue
    enqueue_single: int
    enqueue_bulk: int
    # 2. drain
    drain_jobs: int
    drain_threads: tuple[int, ...] = (1, 4, 16)
    #: Slots of pgqueue.aio's AsyncJobQueueWorker (the asyncio peers' shape).
    drain_asyncio: tuple[int, ...] = (4,)
    drain_processes: int = 2
    threads_per_process: int = 2
    #: Batch size for the lead's batch mode, when JobQueueWorker has ``batch_size``.
    batch_size: int = 50
    batch_threads: tuple[int, ...] = (4, 16)
    # 3. latency
    latency_jobs: int = 200
    latency_spacing: float = 0.020
    latency_poll_interval: float = 5.0
    latency_threads: int = 4
    # 4. scale
    scale_pending: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    scale_history: int = 1_000_000
    scale_future: int = 100_000
    scale_due: int = 10_000
    scale_names: int = 100
    scale_drained: int = 10_000
    scale_threads: int = 4
    # 5. ceiling
    ceiling_seconds: int = 15
    ceiling_clients: tuple[int, ...] = (1, 4, 16)
    ceiling_batches: tuple[int, ...] = (1, 50)
    #: Rows preloaded per jobs-per-transaction setting (enough not to run dry).
    ceiling_rows: dict[int, int] = field(default_factory=lambda: {1: 300_000, 50: 1_500_000})
    # 6. peers
    peer_single: int = 20_000
    peer_bulk: int = 100_000
    peer_drain: int = 20_000
    peer_concurrency: tuple[int, ...] = (4, 16)
    peer_latency_jobs: int = 200
    #: A peer's step stops after this many seconds and reports the rate so far.
    peer_step_cap: float = 15.0
    #: A peer's whole run is killed after this many seconds.
    peer_timeout: float = 240.0
    # 8. side by side: scenario 5's 1-job ceiling, pgqueue and the best peer back to back
    paired_concurrency: tuple[int, ...] = (4, 16)
    # 7. memory
    memory_jobs: int = 1_000_000
    memory_threads: int = 4
    #: Threads of the batch-mode worker (batches of ``batch_size``) beside the default one,
    #: and the share of each chunk queued for it (the rest for the default-mode worker).
    memory_batch_threads: int = 2
    memory_batch_share: float = 0.9
    memory_chunk: int = 50_000
    memory_cap: float = 400.0
    #: The whole run should end within this many seconds: the memory scenario (last)
    #: shortens its cap to what is left (never below 15 s).
    time_budget: float = 1_170.0


def make_plan(quick: bool) -> Plan:
    """The full plan, or the one that finishes in under 3 minutes."""
    if not quick:
        return Plan(
            quick=False, repeats=3, enqueue_single=20_000, enqueue_bulk=100_000, drain_jobs=20_000
        )
    return Plan(
        quick=True,
        repeats=1,
        enqueue_single=5_000,
        enqueue_bulk=20_000,
        drain_jobs=5_000,
        latency_jobs=50,
        scale_pending=(10_000, 100_000),
        scale_history=100_000,
        scale_drained=2_000,
        ceiling_seconds=5,
        ceiling_rows={1: 100_000, 50: 400_000},
        paired_concurrency=(4,),
        peer_single=1_000,
        peer_bulk=20_000,
        peer_drain=5_000,
        peer_latency_jobs=50,
        peer_step_cap=4.0,
        peer_timeout=90.0,
        memory_jobs=100_000,
        memory_chunk=25_000,
        memory_cap=35.0,
        time_budget=172.0,
    )
