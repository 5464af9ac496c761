"""The ``pgqueue dashboard`` sub-command: serve the web dashboard (the ``dashboard`` extra)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ._cli_options import add_app, database, open_connection, option, positive_int
from .errors import ConfigurationError
from .migrate import check_schema

logger = logging.getLogger(__name__)

__all__ = ["add_dashboard_command", "cmd_dashboard"]


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {value}")
    return value


def add_dashboard_command(commands: Any, make: Any) -> None:
    """Register ``dashboard`` with ``make``, cli's sub-command factory."""
    sub: argparse.ArgumentParser = make(
        commands,
        "dashboard",
        cmd_dashboard,
        "serve the web dashboard",
        "Serve a live web page of job counts, the last hour's throughput, failed jobs and "
        "recurring schedules, with retry, cancel and run-now buttons (needs pgqueue[dashboard]). "
        "Binds 127.0.0.1 by default, where no token is needed; any other --host needs --token "
        "(better given as PGQUEUE_DASHBOARD_TOKEN, which other users cannot see in ps).",
    )
    add_app(sub, used=False)
    option(
        sub,
        "--host",
        dest="dashboard_host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address to listen on; not loopback: --token is required",
    )
    option(
        sub,
        "--port",
        dest="dashboard_port",
        type=_port,
        default=8000,
        metavar="PORT",
        help="the port to listen on",
    )
    option(
        sub,
        "--token",
        dest="dashboard_token",
        metavar="TOKEN",
        secret=True,
        help="the access token: a bearer token, a basic-auth password, or typed into the "
        "login page",
    )


def _metrics_routes(dsn: str) -> list[Any]:
    """``/metrics`` (Prometheus, behind the dashboard's token) when the metrics extra is there."""
    try:
        from starlette.routing import Route  # noqa: PLC0415 (an optional extra)

        from .metrics import make_asgi_app  # noqa: PLC0415
    except ImportError:
        logger.warning(
            "no Prometheus scrape at /metrics: install the metrics extra "
            "(pip install 'pgqueue[metrics]') to serve one"
        )
        return []
    return [Route("/metrics", make_asgi_app(dsn))]


def cmd_dashboard(args: argparse.Namespace) -> int:
    """``pgqueue dashboard``: serve the dashboard until Ctrl-C or SIGTERM."""
    try:
        from .dashboard import serve  # noqa: PLC0415 (an optional extra)
        from .dashboard.security import is_loopback  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs the dashboard extra: pip install 'pgqueue[dashboard]' ({exc})"
        ) from None
    host: str = args.dashboard_host
    token: str | None = args.dashboard_token or None
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"--host {host} is reachable from other machines: give a token (--token or "
            "PGQUEUE_DASHBOARD_TOKEN), or bind 127.0.0.1"
        )
    with database(args) as dsn:
        with open_connection(dsn) as conn:
            check_schema(conn)
        shown = f"[{host}]" if ":" in host else host
        print(f"pgqueue dashboard on http://{shown}:{args.dashboard_port}/", flush=True)
        serve(dsn, host=host, port=args.dashboard_port, token=token, routes=_metrics_routes(dsn))
    return 0
