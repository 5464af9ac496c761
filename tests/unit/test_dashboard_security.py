"""The dashboard's pure security helpers: loopback, origins, redirect targets, tokens."""

from __future__ import annotations

import base64

import pytest

from pgqueue.dashboard.security import (
    Auth,
    check_csrf,
    csrf_token,
    is_loopback,
    safe_next,
    same_origin,
)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_same_origin():
    host = {"host": "127.0.0.1:8000"}
    assert same_origin(host)  # not a browser
    assert same_origin({**host, "origin": "http://127.0.0.1:8000"})
    assert same_origin({**host, "origin": "https://127.0.0.1:8000"})  # TLS ended by a proxy
    assert not same_origin({**host, "origin": "http://evil.example"})
    assert not same_origin({**host, "origin": "null"})
    assert same_origin({**host, "referer": "http://127.0.0.1:8000/jobs/1"})
    assert not same_origin({**host, "referer": "http://127.0.0.1.evil.example/"})
    assert not same_origin({**host, "sec-fetch-site": "cross-site"})
    assert not same_origin({**host, "sec-fetch-site": "same-site"})
    assert same_origin({**host, "sec-fetch-site": "same-origin"})


def test_safe_next():
    assert safe_next("/jobs/3?x=1") == "/jobs/3?x=1"
    for bad in (None, "", "jobs", "//evil.example", "/\\evil.example", "http://evil.example/"):
        assert safe_next(bad) == "/"


def test_csrf_token_belongs_to_its_cookie_and_secret():
    token = csrf_token(b"k" * 32, "seed")
    assert check_csrf(b"k" * 32, "seed", token)
    assert not check_csrf(b"k" * 32, "other", token)
    assert not check_csrf(b"x" * 32, "seed", token)
    assert not check_csrf(b"k" * 32, None, token)
    assert not check_csrf(b"k" * 32, "seed", None)


def test_auth_identifies_bearer_basic_and_session():
    auth = Auth("tok", b"k" * 32)
    basic = base64.b64encode(b"ann:tok").decode()
    assert auth.identify({"authorization": "Bearer tok"}, {}) == "bearer"
    assert auth.identify({"authorization": f"Basic {basic}"}, {}) == "basic:ann"
    assert auth.identify({}, {"pgqueue_session": auth.session_value()}) == "session"
    assert auth.identify({"authorization": "Bearer tok2"}, {}) is None
    assert auth.identify({"authorization": "Basic !!!"}, {}) is None
    assert auth.identify({}, {"pgqueue_session": "x"}) is None
    assert Auth("other", b"k" * 32).session_value() != auth.session_value()
    assert Auth(None, b"k" * 32).identify({}, {}) == "local"
