"""Fixtures for the chaos suite: real commander and worker processes on loopback."""

from __future__ import annotations

from relay_testkit.commander_proc import commander_factory  # noqa: F401  (a fixture)
