"""pgqueue dashboard's /metrics route: served with the metrics extra, said when missing."""

from __future__ import annotations

import logging
import sys

import pytest

from pgqueue._cli_dashboard import _metrics_routes


def test_without_the_metrics_extra_the_dashboard_says_it_serves_no_metrics(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pgqueue.metrics", None)  # as if prometheus-client were absent
    with caplog.at_level(logging.WARNING, logger="pgqueue"):
        assert _metrics_routes("host=nowhere") == []
    assert "no Prometheus scrape at /metrics: install the metrics extra" in caplog.text


def test_with_the_metrics_extra_the_route_is_metrics() -> None:
    pytest.importorskip("prometheus_client")
    (route,) = _metrics_routes("host=nowhere dbname=nowhere")
    assert route.path == "/metrics"
