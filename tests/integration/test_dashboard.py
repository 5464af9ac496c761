"""The dashboard's HTTP contract against a real database: counts, chart, lists, actions, CSRF, auth."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from worker_helpers import status

import pgqueue
from pgqueue.cli import main
from pgqueue.dashboard import create_app
from pgqueue.dashboard.data import describe_every
from pgqueue.dashboard.security import FAILURE_WINDOW, MAX_FAILURES

LOCAL = "http://127.0.0.1:8000"
TOKEN = "s3cret-token"


def _client(app: Any, base_url: str = LOCAL, client: str = "127.0.0.1") -> TestClient:
    return TestClient(app, base_url=base_url, client=(client, 50000), follow_redirects=False)


@pytest.fixture
def client(dsn: str) -> Iterator[TestClient]:
    with _client(create_app(dsn)) as c:
        yield c


def _csrf(client: TestClient, path: str = "/") -> str:
    page = client.get(path)
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert match, "no CSRF token on the page"
    return match.group(1)


def _counts(html: str) -> dict[tuple[str, str, str], int]:
    cells = re.findall(
        r'data-queue="([^"]*)" data-name="([^"]*)" data-state="([a-z]+)">(\d+)<', html
    )
    return {(queue, name, state): int(n) for queue, name, state, n in cells}


def _fail(conn: psycopg.Connection[Any], name: str, error: str = "boom") -> int:
    """Enqueue a job of ``name`` and run it once with a handler that raises: failed for good."""
    job_id = pgqueue.add_job_to_queue(conn, name=name, max_attempts=1)

    def handler(c: Any, job: pgqueue.JobRecord) -> None:
        raise RuntimeError(error)

    pgqueue.JobQueueWorker(conn.info.dsn, name, handler=handler).work_off()
    assert status(conn, job_id) == "failed"
    return job_id


def _complete(conn: psycopg.Connection[Any], name: str, count: int) -> None:
    for _ in range(count):
        pgqueue.add_job_to_queue(conn, name=name)
    pgqueue.JobQueueWorker(conn.info.dsn, name, handler=lambda c, job: None).work_off()


# -- what the page shows ---------------------------------------------------------------------


def test_counts_per_queue_name_and_state_match_the_jobs(conn, dsn, client):
    _complete(conn, "email", 2)
    _fail(conn, "email")
    for _ in range(3):
        pgqueue.add_job_to_queue(conn, name="email")
    pgqueue.add_job_to_queue(conn, name="email", scheduled_at=timedelta(hours=1))
    held = pgqueue.add_job_to_queue(conn, name="report", queue="slow")
    cancelled = pgqueue.add_job_to_queue(conn, name="report", queue="slow")
    assert pgqueue.cancel_job(conn, cancelled)
    # "Running" as a worker makes it: the job's advisory lock held by an open transaction.
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(1885827445, %s)", (held,))
        counts = _counts(client.get("/live").text)
    assert counts == {
        **{("default", "email", s): n for s, n in [("pending", 3), ("scheduled", 1)]},
        ("default", "email", "running"): 0,
        ("default", "email", "failed"): 1,
        ("default", "email", "completed"): 2,
        ("default", "email", "cancelled"): 0,
        ("slow", "report", "pending"): 0,
        ("slow", "report", "scheduled"): 0,
        ("slow", "report", "running"): 1,
        ("slow", "report", "failed"): 0,
        ("slow", "report", "completed"): 0,
        ("slow", "report", "cancelled"): 1,
    }
    # Once the transaction ends the job is pending again.
    assert _counts(client.get("/live").text)[("slow", "report", "pending")] == 1


def test_the_page_shows_the_hours_throughput_failed_jobs_and_schedules(conn, client):
    _complete(conn, "thumbs", 4)
    failed = _fail(conn, "thumbs", "ValueError: <bad> & worse\nTraceback line 2")
    schedule_id = pgqueue.add_recurring_job_to_queue(conn, name="nightly", interval={"hours": 6})
    cron_id = pgqueue.add_job_to_queue(conn, name="digest", schedule="*/5 * * * *")
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert re.search(r'id="hour-completed">4<', html)
    assert re.search(r'id="hour-failed">1<', html)
    assert html.count('<rect class="completed"') == 1  # all in this minute
    assert "4 completed, 1 failed" in html
    # The failed job, its error escaped, with a Retry button; and retry-all for its name.
    assert f'id="failed-{failed}"' in html
    assert "ValueError: &lt;bad&gt; &amp; worse" in html
    assert "<bad>" not in html
    assert f'data-action="retry" data-job="{failed}"' in html
    assert 'data-action="retry-failed" data-name="thumbs"' in html
    # Schedules with their next run, and run-now buttons.
    assert f'id="schedule-{schedule_id}"' in html
    assert "every 6 hours" in html
    assert f'id="schedule-{cron_id}"' in html
    assert "cron */5 * * * *" in html
    assert f'data-action="run-now" data-job="{cron_id}"' in html
    # htmx comes from the package, and the page polls its live fragment.
    assert 'hx-get="/live" hx-trigger="every 2s"' in html
    assert client.get("/static/htmx.min.js").status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-frame-options"] == "DENY"


def test_one_jobs_full_record(conn, client):
    job_id = pgqueue.add_job_to_queue(
        conn, name="invoice", data={"order": 7, "note": "<script>"}, priority=3
    )
    html = client.get(f"/jobs/{job_id}").text
    assert f"Job {job_id}" in html
    for field in ("queue", "name", "data", "priority", "max_attempts", "created_at", "crashes"):
        assert f"<th>{field}</th>" in html
    assert "&#34;order&#34;: 7" in html
    assert "&lt;script&gt;" in html
    assert 'data-action="cancel"' in html
    assert client.get("/jobs/999999").status_code == 404
    assert client.get(f"/jobs/{job_id}/live").status_code == 200


def test_describe_every():
    assert describe_every({"hours": 1}) == "every 1 hour"
    assert describe_every({"days": 2, "minutes": 30}) == "every 2 days, 30 minutes"
    assert describe_every({"seconds": 1.5}) == "every 1.5 seconds"
    assert describe_every({"kind": "cron", "text": "0 9 * * 1"}) == "cron 0 9 * * 1"
    assert describe_every({"kind": "text", "text": "every weekday at 9:00"}) == (
        "every weekday at 9:00"
    )


# -- actions ---------------------------------------------------------------------------------


def test_retry_a_failed_job_then_all_failed_of_a_name(conn, client, caplog):
    first = _fail(conn, "sync")
    second = _fail(conn, "sync")
    other = _fail(conn, "other")
    token = _csrf(client)
    with caplog.at_level(logging.INFO, logger="pgqueue.dashboard"):
        response = client.post(f"/jobs/{first}/retry", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["location"] == f"/?done=retry&ok=1&job={first}"
    assert status(conn, first) == "pending"
    assert "is pending again" in client.get(response.headers["location"]).text
    logged = [r for r in caplog.records if getattr(r, "action", None) == "retry"]
    assert [(r.job_id, r.who, r.ok) for r in logged] == [(first, "local (127.0.0.1)", True)]

    # Retrying it again does nothing, and says so.
    again = client.post(f"/jobs/{first}/retry", data={"csrf_token": token})
    assert "ok=0" in again.headers["location"]

    # Logged at INFO: its extra fields once held "name", which logging refuses (KeyError).
    with caplog.at_level(logging.INFO, logger="pgqueue.dashboard"):
        response = client.post(
            "/retry-failed", data={"csrf_token": token, "name": "sync", "queue": "default"}
        )
    assert response.status_code == 303
    assert "count=1" in response.headers["location"]
    (record,) = [r for r in caplog.records if getattr(r, "action", None) == "retry-failed"]
    assert (record.job_name, record.queue) == ("sync", "default")
    assert [status(conn, i) for i in (first, second, other)] == ["pending", "pending", "failed"]


def test_cancel_a_pending_job_and_run_a_scheduled_one_now(conn, client):
    pending = pgqueue.add_job_to_queue(conn, name="a")
    later = pgqueue.add_job_to_queue(conn, name="a", scheduled_at=timedelta(days=1))
    token = _csrf(client)
    response = client.post(f"/jobs/{pending}/cancel", data={"csrf_token": token})
    assert response.status_code == 303
    assert status(conn, pending) == "cancelled"

    response = client.post(
        f"/jobs/{later}/run-now", data={"csrf_token": token, "next": f"/jobs/{later}"}
    )
    assert response.headers["location"] == f"/jobs/{later}?done=run-now&ok=1&job={later}"
    due = conn.execute("SELECT scheduled_at <= now() FROM pgqueue.jobs WHERE id = %s", (later,))
    assert due.fetchone() == (True,)
    # Cancelled is not pending: neither cancel nor run-now applies.
    response = client.post(f"/jobs/{pending}/run-now", data={"csrf_token": token})
    assert "ok=0" in response.headers["location"]
    # Off-site "next" targets are ignored.
    response = client.post(
        f"/jobs/{later}/cancel", data={"csrf_token": token, "next": "//evil.example/x"}
    )
    assert response.headers["location"].startswith("/?done=cancel")


def test_run_now_on_a_recurring_schedule_enqueues_its_job_and_keeps_the_schedule(conn, client):
    recurring = pgqueue.add_recurring_job_to_queue(conn, name="nightly", schedule="0 3 * * *")
    before = pgqueue.get_job(conn, recurring)
    assert before is not None
    response = client.post(f"/jobs/{recurring}/run-now", data={"csrf_token": _csrf(client)})
    assert "ok=1" in response.headers["location"]
    after = pgqueue.get_job(conn, recurring)
    assert after is not None
    assert after.scheduled_at == before.scheduled_at
    [enqueued] = pgqueue.list_jobs(conn, name="nightly")
    assert enqueued.status == "pending"
    due = conn.execute(
        "SELECT scheduled_at <= now() FROM pgqueue.jobs WHERE id = %s", (enqueued.id,)
    )
    assert due.fetchone() == (True,)
    assert f"job={enqueued.id}" not in response.headers["location"]  # the schedule's id is shown


def test_run_job_now_in_python(conn):
    later = pgqueue.add_job_to_queue(conn, name="x", scheduled_at=timedelta(hours=2))
    assert pgqueue.run_job_now(conn, later) == later
    assert pgqueue.run_job_now(conn, later) == later  # already due: nothing to change
    assert pgqueue.cancel_job(conn, later)
    assert pgqueue.run_job_now(conn, later) is None
    assert pgqueue.run_job_now(conn, 424242) is None


# -- CSRF ------------------------------------------------------------------------------------


def test_an_action_without_the_csrf_token_is_refused_and_changes_nothing(conn, client):
    job_id = _fail(conn, "sync")
    token = _csrf(client)
    assert client.post(f"/jobs/{job_id}/retry").status_code == 403
    assert client.post(f"/jobs/{job_id}/retry", data={"csrf_token": "0" * 64}).status_code == 403
    # The token belongs to the cookie: without the cookie it is worthless.
    bare = _client(client.app)
    assert bare.post(f"/jobs/{job_id}/retry", data={"csrf_token": token}).status_code == 403
    # A cross-site form post carries the cookie but not the right origin.
    for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        response = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": token}, headers=headers)
        assert response.status_code == 403
    # GET does not act.
    assert client.get(f"/jobs/{job_id}/retry").status_code == 405
    assert status(conn, job_id) == "failed"
    ok = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": token}, headers={"origin": LOCAL})
    assert ok.status_code == 303
    assert status(conn, job_id) == "pending"


# -- who may ask -------------------------------------------------------------------------------


def test_without_a_token_only_loopback_clients_and_host_names_are_served(dsn):
    app = create_app(dsn)
    with _client(app, client="10.1.2.3") as remote:
        assert remote.get("/").status_code == 403
    # DNS rebinding: a loopback client asked for another host name.
    with _client(app, base_url="http://attacker.example:8000") as rebound:
        assert rebound.get("/").status_code == 403
    with _client(app, base_url="http://localhost:8000", client="::1") as local:
        assert local.get("/").status_code == 200


def test_with_a_token_every_request_needs_it(conn, dsn):
    job_id = _fail(conn, "sync")
    app = create_app(dsn, token=TOKEN)
    with _client(app, base_url="http://dash.example", client="10.1.2.3") as c:
        assert c.get("/live").status_code == 401
        assert c.get("/live").headers["www-authenticate"].startswith("Basic")
        browser = c.get("/jobs/1?x=1", headers={"accept": "text/html"})
        assert browser.status_code == 303
        assert browser.headers["location"] == "/login?next=%2Fjobs%2F1%3Fx%3D1"
        assert c.get("/live", headers={"authorization": "Bearer nope"}).status_code == 401
        assert c.get("/live", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
        assert c.get("/live", headers={"authorization": f"Basic {basic}"}).status_code == 200
        wrong = base64.b64encode(b"admin:guess").decode()
        assert c.get("/live", headers={"authorization": f"Basic {wrong}"}).status_code == 401
        assert c.post(f"/jobs/{job_id}/retry").status_code == 401
        assert c.get("/healthz").status_code == 200
        assert c.get("/static/dashboard.css").status_code == 200

        # The login page sets a session cookie; then the page and its actions work.
        assert c.get("/login").status_code == 200
        refused = c.post("/login", data={"token": "guess", "next": "/"})
        assert refused.status_code == 401
        response = c.post("/login", data={"token": TOKEN, "next": "/jobs/1"})
        assert response.status_code == 303
        assert response.headers["location"] == "/jobs/1"
        assert "pgqueue_session" in c.cookies
        token = _csrf(c)
        response = c.post(f"/jobs/{job_id}/retry", data={"csrf_token": token})
        assert response.status_code == 303
    assert status(conn, job_id) == "pending"


def test_wrong_tokens_from_one_address_are_refused_for_a_while(dsn):
    """After MAX_FAILURES wrong tokens in FAILURE_WINDOW seconds (bearer, basic auth or the
    login form alike) an address gets 429 for any token, even the right one; other addresses,
    requests without a token and a login cookie are not held back."""
    app = create_app(dsn, token=TOKEN)
    right = {"authorization": f"Bearer {TOKEN}"}
    with _client(app, base_url="http://dash.example", client="10.9.9.9") as guesser:
        logged_in = guesser.post("/login", data={"token": TOKEN, "next": "/"})
        assert logged_in.status_code == 303
        cookies = dict(guesser.cookies)
        guesser.cookies.clear()
        wrong = base64.b64encode(b"admin:guess").decode()
        for attempt in range(MAX_FAILURES):
            if attempt % 3 == 0:
                refused = guesser.post("/login", data={"token": f"guess{attempt}", "next": "/"})
            elif attempt % 3 == 1:
                refused = guesser.get("/live", headers={"authorization": f"Basic {wrong}"})
            else:
                refused = guesser.get("/live", headers={"authorization": "Bearer guess"})
            assert refused.status_code == 401, attempt
        held = guesser.get("/live", headers=right)
        assert held.status_code == 429
        assert 50 <= int(held.headers["retry-after"]) <= FAILURE_WINDOW
        login = guesser.post("/login", data={"token": TOKEN, "next": "/"})
        assert login.status_code == 429
        assert "Too many wrong tokens" in login.text
        assert "pgqueue_session" not in guesser.cookies
        # No token shown: not a guess, not held back.
        assert guesser.get("/live").status_code == 401
        guesser.cookies.update(cookies)
        assert guesser.get("/live").status_code == 200
    with _client(app, base_url="http://dash.example", client="10.9.9.10") as other:
        assert other.get("/live", headers=right).status_code == 200


def test_extra_routes_are_served_behind_the_same_token(dsn):
    def metrics(request: Any) -> PlainTextResponse:
        return PlainTextResponse("pgqueue_jobs 1\n")

    app = create_app(dsn, token=TOKEN, routes=[Route("/metrics", metrics)])
    with _client(app) as c:
        assert c.get("/metrics").status_code == 401
        got = c.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert got.text == "pgqueue_jobs 1\n"


def test_the_command_refuses_a_public_address_without_a_token(dsn, capsys, monkeypatch):
    monkeypatch.delenv("PGQUEUE_DASHBOARD_TOKEN", raising=False)
    assert main(["dashboard", "--dsn", dsn, "--host", "0.0.0.0"]) == 1
    assert "give a token" in capsys.readouterr().err
    with pytest.raises(pgqueue.ConfigurationError, match="token"):
        create_app(dsn, token="  ")
