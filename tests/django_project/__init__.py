"""A minimal Django project for tests/integration/test_django.py, run in subprocesses.

Its settings read the test database from PGQUEUE_DJANGO_DSN; `python -m django_project.steps`
(with tests/ on PYTHONPATH) enqueues tasks and reads their results through the framework.
"""
