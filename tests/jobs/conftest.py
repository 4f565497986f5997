"""Fixtures for the jobs tests: the commander app in-process (fast callback retries), a callback receiver."""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay_testkit.commander_proc import commander_factory  # noqa: F401  (a fixture)
from tests.conftest import CommanderFactory
from tests.jobs.calls import FAST
from tests.jobs.receiver import Receiver


@pytest.fixture
def make_commander(make_commander: CommanderFactory) -> CommanderFactory:
    """The suite's factory (tests/conftest.py), with fast callback retries unless a test asks otherwise."""

    def make(**options: Any) -> Awaitable[TestClient]:
        options.setdefault("callbacks", FAST)
        return make_commander(**options)

    return make


@pytest.fixture
async def commander(make_commander: CommanderFactory) -> TestClient:
    return await make_commander()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r
