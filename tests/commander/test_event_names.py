"""One enum of event names (relay.eventnames, re-exported by relay.schema) and one classification of
who records which; every name the code emits is in it, and everyone reads the same sets."""

from __future__ import annotations

import ast
from pathlib import Path

from relay import schema
from relay.eventnames import COMMANDER_EVENTS, LEASE_END_EVENTS, REPORTED_EVENTS, WORKER_EVENTS, EventName
from relay.schema import ReleaseOutcome

RELAY = Path(__file__).resolve().parents[2] / "relay"


def test_the_classification_covers_every_name_once_per_side() -> None:
    assert set(EventName) == WORKER_EVENTS | COMMANDER_EVENTS
    assert not REPORTED_EVENTS & COMMANDER_EVENTS  # a reported name is never one the commander records
    assert WORKER_EVENTS - REPORTED_EVENTS == LEASE_END_EVENTS | {EventName.acquired}
    assert {o.value for o in ReleaseOutcome} | {"fenced"} == {e.value for e in LEASE_END_EVENTS}
    assert schema.EventName is EventName and schema.REPORTED_EVENTS is REPORTED_EVENTS


def _emitted_literals() -> dict[str, list[str]]:
    """Every string literal passed as the first argument of an ``.emit(...)`` call under relay/."""
    found: dict[str, list[str]] = {}
    for path in RELAY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "emit"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.setdefault(node.args[0].value, []).append(str(path.relative_to(RELAY)))
    return found


def test_every_event_a_worker_emits_is_a_worker_event() -> None:
    emitted = _emitted_literals()
    assert {"acquired", "resumed", "fenced", "checkpoint_committed"} <= set(emitted)  # the scan sees them
    unknown = {name: where for name, where in emitted.items() if name not in WORKER_EVENTS}
    assert not unknown, f"emitted but not in relay.eventnames.WORKER_EVENTS: {unknown}"


def test_every_event_the_commander_records_is_a_commander_event() -> None:
    used = set()
    for path in (RELAY / "commander").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "EventName"
            ):
                used.add(EventName[node.attr])
    # what it records, apart from the release events named by the status they lead to
    recorded = used - REPORTED_EVENTS  # the ones it compares reports against are reported names
    assert recorded <= COMMANDER_EVENTS and {EventName.acquired, EventName.fenced} <= recorded


def test_the_worker_and_the_chaos_checker_read_the_same_sets() -> None:
    from relay.worker import events, reporter
    from relay_testkit import chaos_checks

    assert events.EVENT_NAMES is WORKER_EVENTS
    assert reporter.NOT_REPORTED == WORKER_EVENTS - REPORTED_EVENTS
    assert chaos_checks.END_EVENTS is LEASE_END_EVENTS and chaos_checks.REPORTED_EVENTS is REPORTED_EVENTS
