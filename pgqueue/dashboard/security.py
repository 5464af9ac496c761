"""Who may use the dashboard and which POSTs are genuine: the access token, CSRF tokens, origins.

Pure functions over headers and cookies, no web framework: :mod:`pgqueue.dashboard.app`
applies them. Every secret comparison is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "FAILURE_WINDOW",
    "MAX_FAILURES",
    "SESSION_COOKIE",
    "Auth",
    "check_csrf",
    "csrf_token",
    "is_loopback",
    "new_csrf_seed",
    "same_origin",
    "safe_next",
]

#: The double-submit cookie: a random seed; forms carry its HMAC under the app's secret.
CSRF_COOKIE: Final = "pgqueue_csrf"
#: The form field that carries the CSRF token.
CSRF_FIELD: Final = "csrf_token"
#: Set by a successful login: an HMAC of the access token under the app's secret.
SESSION_COOKIE: Final = "pgqueue_session"
#: Wrong tokens (a login, a bearer token, a basic-auth password) one client address may give
#: in :data:`FAILURE_WINDOW` seconds; then its attempts are refused (429) until the oldest of
#: them is that old.
MAX_FAILURES: Final = 10
FAILURE_WINDOW: Final = 60.0
#: Client addresses remembered at most (the least recently failed are forgotten first).
_MAX_CLIENTS: Final = 10_000


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.1``, ``::1``, ``[::1]``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _mac(secret: bytes, purpose: bytes, value: str) -> str:
    return hmac.new(secret, purpose + b"\x00" + value.encode(), hashlib.sha256).hexdigest()


def new_csrf_seed() -> str:
    """A fresh random value for the CSRF cookie."""
    return secrets.token_urlsafe(32)


def csrf_token(secret: bytes, seed: str) -> str:
    """The token a form must send back for the CSRF cookie ``seed``."""
    return _mac(secret, b"csrf", seed)


def check_csrf(secret: bytes, seed: str | None, submitted: str | None) -> bool:
    """True when ``submitted`` is the token of the cookie ``seed`` (both present)."""
    if not seed or not submitted:
        return False
    return hmac.compare_digest(csrf_token(secret, seed), submitted)


def same_origin(headers: Mapping[str, str]) -> bool:
    """False when the browser says the request comes from another site.

    Checks ``Sec-Fetch-Site`` (same-origin or none), else ``Origin``, else
    ``Referer``, against ``Host``. A request with none of the three (not a
    browser: curl, a script) passes here; it still needs the CSRF token.
    """
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    host = (headers.get("host") or "").lower()
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is None:
            continue
        if value == "null":
            return False
        return urlsplit(value).netloc.lower() == host
    return True


def safe_next(target: str | None, default: str = "/") -> str:
    """``target`` when it is a path on this site (no scheme, no ``//host``), else ``default``."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    return target


class Auth:
    """The access token, checked as a bearer token, a basic-auth password or a login cookie.

    ``token`` None means no authentication (the dashboard is on loopback):
    everyone is ``"local"``. ``secret`` keys the login cookie and the CSRF
    tokens; a restart with a new secret logs everyone out.
    """

    def __init__(self, token: str | None, secret: bytes) -> None:
        self.token = token
        self.secret = secret
        # Per client address, the times of its recent wrong tokens (one event loop: no lock).
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may try a token again; None when it may now."""
        times = self._failures.get(client)
        if times is None:
            return None
        now = time.monotonic()
        while times and times[0] <= now - FAILURE_WINDOW:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        if len(times) < MAX_FAILURES:
            return None
        return math.ceil(times[0] + FAILURE_WINDOW - now)

    def failed(self, client: str) -> None:
        """Count a wrong token from ``client``."""
        times = self._failures.pop(client, None) or deque(maxlen=MAX_FAILURES)
        times.append(time.monotonic())
        self._failures[client] = times
        while len(self._failures) > _MAX_CLIENTS:
            self._failures.popitem(last=False)

    def shown(self, headers: Mapping[str, str]) -> bool:
        """Whether the request offers a token in its Authorization header (a login cookie is
        not a guess of the token: it is an HMAC under the app's secret)."""
        scheme = (headers.get("authorization") or "").partition(" ")[0].lower()
        return scheme in ("bearer", "basic")

    @property
    def required(self) -> bool:
        """True when requests must prove they know the token."""
        return self.token is not None

    def session_value(self) -> str:
        """The login cookie's value: an HMAC of the token, so a new token logs everyone out."""
        return _mac(self.secret, b"session", self.token or "")

    def check_token(self, candidate: str) -> bool:
        """True when ``candidate`` is the token (constant-time)."""
        if self.token is None:
            return True
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def identify(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
        """Who is asking, for the log (``bearer``, ``basic:<user>``, ``session``, ``local``);
        None when the token is required and not shown."""
        if self.token is None:
            return "local"
        scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.check_token(credentials.strip()):
            return "bearer"
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            user, sep, password = decoded.partition(":")
            if sep and self.check_token(password):
                return f"basic:{user[:64]}"
        cookie = cookies.get(SESSION_COOKIE)
        if cookie and hmac.compare_digest(cookie, self.session_value()):
            return "session"
        return None
