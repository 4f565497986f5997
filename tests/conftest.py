"""Suite-wide settings (no test may reach the network, the repo root is importable) and the one factory of
in-process commanders that every test directory uses."""

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from relay.commander.app import create_app  # noqa: E402
from relay.commander.callbacks import CallbackSettings  # noqa: E402

CommanderFactory = Callable[..., Awaitable[TestClient]]

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def make_commander(aiohttp_client: Any, tmp_path: Path) -> CommanderFactory:
    """``await make_commander(state=..., callbacks=..., secret=..., lease_ttl_s=..., sweep_interval_s=...)``:
    the commander app (``relay.commander.app.create_app``) behind a real HTTP server on loopback.
    ``client_options`` go to the test client (``cookie_jar=DummyCookieJar()``: every cookie sent by hand)."""

    async def make(
        *,
        state: Path | None = None,
        callbacks: CallbackSettings | None = None,
        client_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> TestClient:
        app = create_app(state or tmp_path / "state.db", callback_settings=callbacks, **options)
        return await aiohttp_client(app, **(client_options or {}))

    return make
