"""Request helpers for the jobs tests (spec bodies built in one place)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from relay.commander.callbacks import CallbackSettings

#: Retries in tens of milliseconds, heartbeats off (tests that want them ask for a short interval).
FAST = CallbackSettings(interval_s=3600, timeout_s=3, backoff_s=0.05, backoff_max_s=0.2, max_attempts=1000)


def spec(run_id: str | None = "j1", **fields: Any) -> dict[str, Any]:
    """A small valid run spec."""
    body: dict[str, Any] = {"mode": "sft", "train": {"max_steps": 4}, **fields}
    if run_id is not None:
        body["run_id"] = run_id
    return body


async def submit(client: TestClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/api/runs", json=body)
    return resp.status, await resp.json()
