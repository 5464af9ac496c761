"""Settings of the test project: one PostgreSQL database (psycopg 3), pgqueue as the task backend."""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["PGQUEUE_DJANGO_DSN"])

SECRET_KEY = "pgqueue-tests-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "django_project.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
        # Each request runs in a transaction: a task enqueued by a view that fails is gone.
        "ATOMIC_REQUESTS": True,
    }
}
TASKS = {
    "default": {
        "BACKEND": "pgqueue.django.PgQueueBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {
            "database": "default",
            "max_attempts": int(os.environ.get("PGQUEUE_DJANGO_MAX_ATTEMPTS", "1")),
        },
    }
}
LOGGING = {"version": 1, "disable_existing_loggers": False}
