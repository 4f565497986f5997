"""Dashboard sessions: a random token in an ``HttpOnly; SameSite=Strict`` cookie, and a CSRF token per session.

Why not a signed cookie or a library (aiohttp-session): the commander is one process, so an in-memory
table is the whole store, and it makes logout exact (the token is forgotten, not merely expired) with
nothing to configure.  A commander restart logs everybody out, which is cheap: the login asks for the
shared secret once.  The secret itself is checked once, at login, and never stored in the session.

A session dies after :data:`IDLE_S` without a request, or :data:`MAX_AGE_S` after login; the table is
capped (:data:`MAX_SESSIONS`, oldest first out), so nobody can grow the commander's memory by logging in
in a loop.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "relay_session"
LOGIN_COOKIE = "relay_login"  # double-submit token of the login form (login CSRF)
COOKIE_PATH = "/ui"
IDLE_S = 12 * 3600.0
MAX_AGE_S = 7 * 24 * 3600.0
MAX_SESSIONS = 1000


@dataclass
class Session:
    """One logged-in browser: its cookie token, its CSRF token, and its clock."""

    token: str
    csrf: str
    created: float
    seen: float


class SessionStore:
    """The sessions of one commander, in memory; every method is called from the event loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> Session:
        """A new session (the oldest one is dropped when the table is full)."""
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self._sessions[session.token] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie value, refreshed; None for a missing, unknown or expired one."""
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > IDLE_S or now - session.created > MAX_AGE_S:
            del self._sessions[token]
            return None
        session.seen = now
        self._sessions.move_to_end(token)
        return session

    def drop(self, token: str | None) -> bool:
        """Forget a session (logout); True when there was one."""
        return token is not None and self._sessions.pop(token, None) is not None


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one (a missing one never matches)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())
