"""The dashboard's Starlette app: server-rendered pages, htmx-polled fragments, CSRF-safe actions.

:func:`create_app` builds the ASGI app (mount it anywhere, or add routes of
your own to it); :func:`serve` runs it with uvicorn, as ``pgqueue dashboard`` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import jinja2
import psycopg
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..admin import cancel_job, retry_failed_jobs, retry_job, run_job_now
from ..errors import ConfigurationError
from ..migrate import check_schema
from ..queue import get_job
from ..records import JobRecord, JobStatus
from .data import STATES, read_snapshot
from .security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    Auth,
    check_csrf,
    csrf_token,
    is_loopback,
    new_csrf_seed,
    safe_next,
    same_origin,
)

__all__ = ["create_app", "serve"]

logger = logging.getLogger("pgqueue.dashboard")

#: Paths anyone may load: the login page, the health check, and the static files.
_PUBLIC: Final = ("/login", "/healthz", "/static/")

_SECURITY_HEADERS: Final = {
    # htmx and our CSS come from /static; the chart is inline SVG. No framing (clickjacking).
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}

#: The actions on one job: POST /jobs/<id>/<action>.
_ACTIONS: Final = ("retry", "cancel", "run-now")

#: What an action reports back on the page (``?done=<key>&ok=0|1``).
_NOTICES: Final = {
    ("retry", "1"): "Job {job} is pending again.",
    ("retry", "0"): "Job {job} was not retried: it is neither failed nor cancelled.",
    ("cancel", "1"): "Job {job} is cancelled.",
    ("cancel", "0"): "Job {job} was not cancelled: it is running, finished or unknown.",
    ("run-now", "1"): "Job {job} is due now.",
    ("run-now", "0"): "Job {job} was not run now: it is running, finished or unknown.",
    ("retry-failed", "1"): "{count} failed job(s) of {name} are pending again.",
    ("retry-failed", "0"): "No failed jobs of {name} to retry.",
}


def _format_time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _relative(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return ""
    seconds = (value - (now or datetime.now(UTC))).total_seconds()
    span = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if span >= size:
            text = f"{span / size:.0f} {unit}"
            break
    else:
        text = f"{span:.0f} s"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _fields(job: JobRecord) -> list[tuple[str, Any]]:
    return [(f.name, getattr(job, f.name)) for f in dataclasses.fields(job)]


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pgqueue.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ts"] = _format_time
    env.filters["relative"] = _relative
    env.filters["pretty"] = _pretty
    env.globals["STATES"] = STATES
    env.globals["JobStatus"] = JobStatus
    return env


class _Guard:
    """ASGI middleware: security headers on every response, then who may ask at all.

    Without a token only loopback clients naming a loopback host are served
    (the Host check stops DNS rebinding). With one, every path but
    :data:`_PUBLIC` needs it: browsers are sent to the login page, other
    clients get 401 with a ``WWW-Authenticate`` challenge.
    """

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        client = request.client.host if request.client else ""
        if not self.auth.required:
            host = urlsplit("//" + (request.headers.get("host") or "")).hostname or ""
            if not (is_loopback(client) and is_loopback(host)):
                return PlainTextResponse("this dashboard serves loopback only", status_code=403)
            request.scope.setdefault("state", {})["who"] = f"local ({client})"
            return None
        shown = self.auth.shown(request.headers)
        wait = self.auth.retry_after(client) if shown else None
        if wait is not None:
            return _too_many_wrong_tokens(wait)
        who = self.auth.identify(request.headers, request.cookies)
        if who is not None:
            request.scope.setdefault("state", {})["who"] = f"{who} ({client})"
            return None
        if shown:
            self.auth.failed(client)
            logger.warning("dashboard token refused from %s", client, extra={"action": "auth"})
        path = request.url.path
        if path.startswith(_PUBLIC):
            return None
        wants_page = "text/html" in request.headers.get("accept", "")
        if request.method == "GET" and wants_page and "hx-request" not in request.headers:
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
        return PlainTextResponse(
            "authentication required: a bearer token, basic auth (password = token) or a login",
            status_code=401,
            headers={"www-authenticate": 'Basic realm="pgqueue dashboard", charset="UTF-8"'},
        )


def _too_many_wrong_tokens(wait: int) -> Response:
    return PlainTextResponse(
        f"too many wrong tokens from this address: try again in {wait} s",
        status_code=429,
        headers={"retry-after": str(wait)},
    )


class _Dashboard:
    """The endpoints, sharing a connection pool, the templates and the auth settings."""

    def __init__(self, auth: Auth, poll_seconds: float) -> None:
        self._pool: ConnectionPool[Any] | None = None
        self.auth = auth
        self.poll_seconds = poll_seconds
        self.env = _templates()

    @property
    def pool(self) -> ConnectionPool[Any]:
        """The app's connection pool, open between start-up and shutdown (the lifespan)."""
        if self._pool is None:
            raise RuntimeError("the dashboard app is not started (its lifespan has not run)")
        return self._pool

    @pool.setter
    def pool(self, pool: ConnectionPool[Any] | None) -> None:
        self._pool = pool

    # -- rendering ----------------------------------------------------------------------

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Response:
        seed = request.cookies.get(CSRF_COOKIE) or ""
        fresh = len(seed) < 32
        if fresh:
            seed = new_csrf_seed()
        context.setdefault("notice", None)
        html = self.env.get_template(template).render(
            request=request,
            csrf_field=CSRF_FIELD,
            csrf_token=csrf_token(self.auth.secret, seed),
            poll=f"every {self.poll_seconds:g}s",
            login_required=self.auth.required,
            root=request.scope.get("root_path", ""),
            **context,
        )
        response = HTMLResponse(html, status_code=status_code)
        response.headers["cache-control"] = "no-store"
        if fresh:
            response.set_cookie(
                CSRF_COOKIE,
                seed,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    def _notice(self, request: Request) -> str | None:
        params = request.query_params
        text = _NOTICES.get((params.get("done", ""), params.get("ok", "")))
        if text is None:
            return None
        return text.format(
            job=params.get("job", "?"),
            count=params.get("count", "0"),
            name=params.get("name", "?"),
        )

    # -- pages and fragments --------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        snapshot = await run_in_threadpool(self._read, read_snapshot)
        return self.render(request, "index.html", s=snapshot, notice=self._notice(request))

    async def live(self, request: Request) -> Response:
        snapshot = await run_in_threadpool(self._read, read_snapshot)
        return self.render(request, "_live.html", s=snapshot)

    async def job(self, request: Request) -> Response:
        job = await self._job(request)
        if job is None:
            return self.render(request, "missing.html", status_code=404, job_id=self._id(request))
        return self.render(
            request, "job.html", job=job, fields=_fields(job), notice=self._notice(request)
        )

    async def job_live(self, request: Request) -> Response:
        job = await self._job(request)
        if job is None:
            return self.render(request, "missing.html", status_code=404, job_id=self._id(request))
        return self.render(request, "_job.html", job=job, fields=_fields(job))

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    def _read(self, reader: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        with self.pool.connection() as conn:
            return reader(conn)

    @staticmethod
    def _id(request: Request) -> int:
        value: int = request.path_params["job_id"]
        return value

    async def _job(self, request: Request) -> JobRecord | None:
        job_id = self._id(request)
        if not -(2**63) <= job_id < 2**63:
            return None
        return await run_in_threadpool(get_job, self.pool, job_id)

    # -- login ------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        target = safe_next(request.query_params.get("next"))
        return self.render(request, "login.html", next=target, error=None)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        target = safe_next(str(form.get("next") or ""))
        client = request.client.host if request.client else "?"
        if not same_origin(request.headers):
            return PlainTextResponse("cross-site login refused", status_code=403)
        if not self.auth.required:
            return RedirectResponse(target, status_code=303)
        wait = self.auth.retry_after(client)
        if wait is not None:
            response = self.render(
                request,
                "login.html",
                status_code=429,
                next=target,
                error=f"Too many wrong tokens: try again in {wait} s.",
            )
            response.headers["retry-after"] = str(wait)
            return response
        if not self.auth.check_token(str(form.get("token") or "")):
            self.auth.failed(client)
            logger.warning("dashboard login refused from %s", client, extra={"action": "login"})
            return self.render(
                request, "login.html", status_code=401, next=target, error="Wrong token."
            )
        logger.info("dashboard login from %s", client, extra={"action": "login"})
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.auth.session_value(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    # -- actions ------------------------------------------------------------------------------

    async def _checked_form(self, request: Request) -> dict[str, str] | Response:
        """The POSTed form, or a 403 when it is cross-site or lacks the CSRF token."""
        form = await request.form()
        fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
        who = request.scope.get("state", {}).get("who", "?")
        if not same_origin(request.headers):
            logger.warning("dashboard: cross-site POST %s refused (%s)", request.url.path, who)
            return PlainTextResponse("cross-site request refused", status_code=403)
        if not check_csrf(
            self.auth.secret, request.cookies.get(CSRF_COOKIE), fields.get(CSRF_FIELD)
        ):
            logger.warning(
                "dashboard: POST %s without a valid CSRF token (%s)", request.url.path, who
            )
            return PlainTextResponse(
                "missing or invalid CSRF token: reload the page and try again", status_code=403
            )
        return fields

    async def job_action(self, request: Request) -> Response:
        checked = await self._checked_form(request)
        if isinstance(checked, Response):
            return checked
        root = request.scope.get("root_path", "")
        action = request.path_params["action"]
        job_id = self._id(request)
        if action not in _ACTIONS or not -(2**63) <= job_id < 2**63:
            return PlainTextResponse("not found", status_code=404)
        who = request.state.who
        if action == "retry":
            ok = await run_in_threadpool(retry_job, self.pool, job_id)
        elif action == "cancel":
            ok = await run_in_threadpool(cancel_job, self.pool, job_id)
        else:  # run-now, by the route's pattern
            ok = await run_in_threadpool(run_job_now, self.pool, job_id) is not None
        logger.info(
            "dashboard: %s job %s by %s: %s",
            action,
            job_id,
            who,
            "done" if ok else "not applicable",
            extra={"action": action, "job_id": job_id, "who": who, "ok": ok},
        )
        back = safe_next(checked.get("next"), "/").split("?")[0]
        query = urlencode({"done": action, "ok": int(ok), "job": job_id})
        return RedirectResponse(f"{root}{back}?{query}", status_code=303)

    async def retry_failed(self, request: Request) -> Response:
        checked = await self._checked_form(request)
        if isinstance(checked, Response):
            return checked
        name = checked.get("name")
        queue = checked.get("queue")
        if name is None:
            return PlainTextResponse("retry-failed needs a job name", status_code=400)
        count = await run_in_threadpool(retry_failed_jobs, self.pool, name=name, queue=queue)
        who = request.state.who
        logger.info(
            "dashboard: retry-failed name=%r queue=%r by %s: %d job(s)",
            name,
            queue,
            who,
            count,
            extra={"action": "retry-failed", "job_name": name, "queue": queue, "who": who},
        )
        query = urlencode(
            {"done": "retry-failed", "ok": int(count > 0), "count": count, "name": name}
        )
        root = request.scope.get("root_path", "")
        return RedirectResponse(f"{root}/?{query}", status_code=303)


def create_app(
    dsn: str,
    *,
    token: str | None = None,
    routes: Sequence[BaseRoute] = (),
    secret: bytes | None = None,
    poll_seconds: float = 2.0,
    pool_size: int = 4,
) -> Starlette:
    """Build the dashboard's ASGI app on the database at ``dsn``.

    ``token`` (default None): required of every request as a bearer token,
    a basic-auth password (any user name) or through the login page; None
    serves loopback clients only. ``routes``: extra Starlette routes served
    beside the dashboard, behind the same token (for instance
    ``Route("/metrics", endpoint)``, or ``Route("/metrics", app)`` for
    :func:`pgqueue.metrics.make_asgi_app`'s app).
    ``secret`` keys the login cookie and CSRF tokens (default: random per
    process, so a restart logs everyone out). ``poll_seconds`` (default 2):
    how often the page refreshes its live parts. ``pool_size`` (default 4):
    the most database connections the dashboard opens.
    """
    if token is not None and not token.strip():
        raise ConfigurationError("the dashboard token must not be empty")
    if not 0.2 <= poll_seconds <= 3600:
        raise ConfigurationError("poll_seconds must be between 0.2 and 3600")
    auth = Auth(token, secret if secret is not None else secrets.token_bytes(32))
    dash = _Dashboard(auth, poll_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A pool per start-up: a closed pool cannot be opened again.
        pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True},
            name="pgqueue-dashboard",
        )
        await run_in_threadpool(pool.open, True, 10.0)
        try:
            dash.pool = pool
            await run_in_threadpool(dash._read, check_schema)
            yield
        finally:
            dash.pool = None
            await run_in_threadpool(pool.close)

    job_path = "/jobs/{job_id:int}"
    app = Starlette(
        routes=[
            Route("/", dash.index),
            Route("/live", dash.live),
            Route(job_path, dash.job),
            Route(job_path + "/live", dash.job_live),
            Route(job_path + "/{action:str}", dash.job_action, methods=["POST"]),
            Route("/retry-failed", dash.retry_failed, methods=["POST"]),
            Route("/login", dash.login_page),
            Route("/login", dash.login, methods=["POST"]),
            Route("/healthz", dash.healthz),
            Mount(
                "/static", StaticFiles(packages=[("pgqueue.dashboard", "static")]), name="static"
            ),
            *routes,
        ],
        lifespan=lifespan,
    )
    app.add_middleware(_Guard, auth=auth)
    return app


def serve(
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    routes: Sequence[BaseRoute] = (),
) -> None:
    """Serve the dashboard with uvicorn until interrupted.

    Binds ``host`` (default 127.0.0.1) and ``port`` (default 8000). On any
    address that is not loopback a ``token`` is required (ConfigurationError
    otherwise). ``routes`` as in :func:`create_app`.
    """
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"the dashboard would be reachable from other machines on {host}: give it a "
            "token (--token or PGQUEUE_DASHBOARD_TOKEN), or bind 127.0.0.1"
        )
    import uvicorn  # noqa: PLC0415 (only `serve` needs the server)

    app = create_app(dsn, token=token, routes=routes)
    logger.info(
        "dashboard on http://%s:%d/ (%s)",
        f"[{host}]" if ":" in host else host,
        port,
        "token required" if token else "loopback only, no token",
    )
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
