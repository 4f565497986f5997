"""Schemathesis drives every documented operation with generated input: no 5xx, answers match the document."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from relay.commander.openapi import build_openapi
from relay_testkit.commander_proc import CommanderProcess
from tests.commander.calls import SECRET, cap_long_poll

# 413 is a rejection too (the generator happily builds multi-megabyte bodies from the array limits).
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 409, 413, 422]}}}
)
schema = schemathesis.openapi.from_dict(build_openapi(), config=CONFIG)


@pytest.fixture(scope="module")
def fuzz_commander(tmp_path_factory):
    # Generated specs carry callbacks to made-up hosts: queue them, never send them (no network in tests).
    env = {**os.environ, "RELAY_CALLBACK_DELIVER": "0"}
    proc = CommanderProcess(
        tmp_path_factory.mktemp("fuzz") / "state.db", secret=SECRET, lease_ttl_s=30, env=env
    ).start()
    yield proc
    proc.close()


@schema.parametrize()
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_operation_never_fails_and_matches_the_document(case, fuzz_commander):
    cap_long_poll(case.body)
    case.call_and_validate(base_url=fuzz_commander.url, headers={"Authorization": f"Bearer {SECRET}"})
