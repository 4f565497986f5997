"""Commander tests: the suite's in-process commander (tests/conftest.py), and `relayctl serve` subprocesses."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from relay_testkit.commander_proc import commander_factory  # noqa: F401  (a fixture)
from tests.conftest import CommanderFactory


@pytest.fixture
async def client(make_commander: CommanderFactory) -> TestClient:
    return await make_commander()
