"""Shared-secret authentication: ``Authorization: Bearer <secret>`` or ``X-Relay-Secret: <secret>``.

``X-Relay-Secret`` is accepted for compatibility with the original relay-trainer.
Comparison is constant-time (``hmac.compare_digest``) so the answer's timing says
nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

BEARER_PREFIX = "bearer "


class SharedSecretAuth:
    """Checks request headers against one shared secret; no secret means every request passes."""

    def __init__(self, secret: str | None) -> None:
        self.enabled = bool(secret)
        self._secret = (secret or "").encode()

    def check(self, headers: Mapping[str, str]) -> bool:
        """True when auth is off or one of the two headers carries the secret."""
        if not self.enabled:
            return True
        ok = False
        authorization = headers.get("Authorization")
        if authorization is not None and authorization[:7].lower() == BEARER_PREFIX:
            ok |= hmac.compare_digest(_bytes(authorization[7:].strip()), self._secret)
        legacy = headers.get("X-Relay-Secret")
        if legacy is not None:
            ok |= hmac.compare_digest(_bytes(legacy.strip()), self._secret)
        return ok


def _bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def auth_headers(secret: str | None) -> dict[str, str]:
    """Headers a client sends to authenticate with ``secret`` (none when it is empty)."""
    return {"Authorization": f"Bearer {secret}"} if secret else {}
