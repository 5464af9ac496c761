"""The web dashboard (``pgqueue dashboard``): live job counts, throughput, failed jobs and
schedules, with retry, cancel and run-now actions. Needs the ``dashboard`` extra
(``pip install pgqueue[dashboard]``): Starlette, Jinja2, uvicorn and python-multipart.
"""

from __future__ import annotations

from .app import create_app, serve

__all__ = ["create_app", "serve"]
