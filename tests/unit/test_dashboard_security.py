"""The dashboard's pure security helpers: loopback, origins, redirect targets, tokens."""

from __future__ import annotations

import base64

import pytest

from pgqueue.dashboard import security
from pgqueue.dashboard.security import (
    FAILURE_WINDOW,
    MAX_FAILURES,
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


def test_wrong_tokens_hold_an_address_back_until_the_oldest_leaves_the_window(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(security.time, "monotonic", lambda: clock[0])
    auth = Auth("t0ken", b"k" * 32)
    for _ in range(MAX_FAILURES - 1):
        auth.failed("10.0.0.1")
        clock[0] += 1
    assert auth.retry_after("10.0.0.1") is None, "one wrong token short of the limit"
    auth.failed("10.0.0.1")
    assert auth.retry_after("10.0.0.1") == FAILURE_WINDOW - (MAX_FAILURES - 1)
    assert auth.retry_after("10.0.0.2") is None
    clock[0] = 1000.0 + FAILURE_WINDOW  # the first wrong token is now that old
    assert auth.retry_after("10.0.0.1") is None
    assert auth.shown({"authorization": "Bearer x"})
    assert auth.shown({"authorization": "basic eDp5"})
    assert not auth.shown({"authorization": "Digest x"})
    assert not auth.shown({})


def test_the_failed_addresses_remembered_are_bounded(monkeypatch):
    monkeypatch.setattr(security, "_MAX_CLIENTS", 3)
    auth = Auth("t0ken", b"k" * 32)
    for client in ("a", "b", "c", "d"):
        for _ in range(MAX_FAILURES):
            auth.failed(client)
    assert auth.retry_after("a") is None, "the least recently failed was forgotten"
    assert all(auth.retry_after(client) is not None for client in ("b", "c", "d"))
