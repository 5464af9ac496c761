"""The dashboard end to end: `pgqueue dashboard` as a subprocess, driven by a real headless Chromium.

Debian's ``chromium`` through Playwright's Python client (``executable_path``; Playwright's own
browser download is never used). Skipped when either is missing, unless
PGQUEUE_TEST_REQUIRE_BROWSER=1 (CI), which makes that a failure. The screenshot lands in pytest's
tmp dir and, when PGQUEUE_SCREENSHOT_DIR is set, there too (CI keeps it as an artifact).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import clean_env, command, wait_until

import pgqueue

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Playwright's wait for what the page shows: a few polls of the live fragment (every 2 s).
SEEN_WITHIN_MS = 20_000


def _chromium() -> str:
    found = os.environ.get("PGQUEUE_TEST_CHROMIUM") or shutil.which("chromium")
    required = os.environ.get("PGQUEUE_TEST_REQUIRE_BROWSER") == "1"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("PGQUEUE_TEST_REQUIRE_BROWSER=1 but the playwright package is missing")
        pytest.skip("the playwright package is not installed")
    if not found:
        if required:
            pytest.fail("PGQUEUE_TEST_REQUIRE_BROWSER=1 but there is no chromium on PATH")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def dashboard(dsn: str, tmp_path: Path) -> Iterator[str]:
    """`pgqueue dashboard` on a free loopback port; yields its URL."""
    port = _free_port()
    log = (tmp_path / "dashboard.log").open("w")
    process = subprocess.Popen(
        command("dashboard", "--port", str(port)),
        env=clean_env({"PGQUEUE_DSN": dsn}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _healthy(url) or process.poll() is not None, what="the dashboard to start"
        )
        assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _handlers() -> dict[str, Any]:
    def resize(conn: Any, job: pgqueue.JobRecord) -> None:
        pass

    def charge(conn: Any, job: pgqueue.JobRecord) -> None:
        if job.attempts == 1:
            raise RuntimeError("card declined (try again later)")

    def notify(conn: Any, job: pgqueue.JobRecord) -> None:
        raise ConnectionError("smtp.example.com:587 refused the connection")

    return {"resize": resize, "charge": charge, "notify": notify}


def _save_screenshot(page: Any, tmp_path: Path) -> Path:
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    keep = os.environ.get("PGQUEUE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "dashboard.png")
    return shot


def test_the_page_follows_the_jobs_and_retries_a_failed_one(conn, dsn, dashboard, tmp_path):
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright

    pgqueue.add_recurring_job_to_queue(conn, name="nightly-report", schedule="0 3 * * *")
    pgqueue.add_job_to_queue(conn, name="resize", scheduled_at=timedelta(minutes=30))
    for index in range(5):
        pgqueue.add_job_to_queue(conn, name="resize", data={"image": index})
    charge = pgqueue.add_job_to_queue(conn, name="charge", queue="payments", max_attempts=1)
    pgqueue.add_job_to_queue(conn, name="notify", max_attempts=1)

    def cell(page: Any, queue: str, name: str, state: str) -> Any:
        return page.locator(f'td[data-queue="{queue}"][data-name="{name}"][data-state="{state}"]')

    worker = pgqueue.JobQueueWorker(dsn, handler=_handlers(), poll_interval=0.2)
    with sync_playwright() as p:
        # launch() gives the browser a fresh, temporary profile of its own.
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(SEEN_WITHIN_MS)
            page.goto(dashboard)
            expect(cell(page, "default", "resize", "pending")).to_have_text("5")
            expect(cell(page, "default", "resize", "scheduled")).to_have_text("1")
            expect(cell(page, "default", "resize", "completed")).to_have_text("0")

            # The counts change on the page (htmx polling) as a worker processes the jobs.
            worker.start()
            try:
                expect(cell(page, "default", "resize", "completed")).to_have_text("5")
                expect(cell(page, "default", "resize", "pending")).to_have_text("0")
                expect(cell(page, "payments", "charge", "failed")).to_have_text("1")
                expect(cell(page, "default", "notify", "failed")).to_have_text("1")
                expect(page.locator(f"#failed-{charge}")).to_contain_text("card declined")
                expect(page.locator("#hour-completed")).to_have_text("5")

                # Retry the failed charge in the browser: a CSRF-protected POST; the worker
                # then runs it again and the page shows it completed.
                page.locator(f'button[data-action="retry"][data-job="{charge}"]').click()
                expect(page.locator("#notice")).to_contain_text(f"Job {charge} is pending again")
                expect(cell(page, "payments", "charge", "completed")).to_have_text("1")
                expect(cell(page, "payments", "charge", "failed")).to_have_text("0")
                expect(page.locator(f"#failed-{charge}")).to_have_count(0)
                expect(page.locator("#hour-completed")).to_have_text("6")
            finally:
                worker.stop()
            job = pgqueue.get_job(conn, charge)
            assert job is not None
            assert job.status == "completed"
            assert job.attempts == 2

            page.goto(dashboard)  # without the notice, for the picture
            expect(cell(page, "payments", "charge", "completed")).to_have_text("1")
            shot = _save_screenshot(page, tmp_path)
            assert shot.stat().st_size > 10_000

            # One job's full record.
            page.goto(f"{dashboard}/jobs/{charge}")
            expect(page.locator("#job-status")).to_have_text("completed")
            expect(page.locator("table.record")).to_contain_text("card declined")
        finally:
            browser.close()


def test_the_dashboard_command_serves_prometheus_metrics(conn: Any, dashboard: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    pgqueue.add_jobs_to_queue(conn, [{"name": "resize"} for _ in range(3)])
    pgqueue.add_job_to_queue(conn, name="resize", scheduled_at=timedelta(hours=1))
    with urllib.request.urlopen(dashboard + "/metrics", timeout=10) as response:
        assert response.url == dashboard + "/metrics"  # served there, not redirected
        text = response.read().decode()
    depth = {
        (sample.labels["name"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "pgqueue_jobs"
        for sample in family.samples
        if sample.labels.get("queue") == "default"
    }
    assert depth[("resize", "pending")] == 3
    assert depth[("resize", "scheduled")] == 1
