"""Fixtures for the worker's end-to-end tests: a real commander subprocess and worker subprocesses."""

from relay_testkit.commander_proc import commander_factory  # noqa: F401
