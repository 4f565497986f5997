"""The demo's closing checks: a clean relay passes, and each way a relay can go wrong is named."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from relay.demo.timeline import PodFacts
from relay.demo.verdict import RelayFacts, check_relay, steps_lost, summary_lines


def losses(first: int, last: int, start: float, end: float) -> dict[int, float | None]:
    n = last - first
    return {s: start + (end - start) * (s - first) / max(n, 1) for s in range(first, last + 1)}


def good() -> RelayFacts:
    a = PodFacts(
        "pod-a",
        epochs=[1],
        resumed=[{"step": 0, "source": "cold_start"}],
        committed=[10, 15],
        synced=[10, 15],
        losses=losses(1, 15, 5.6, 1.5),
        outcome="preempted",
        exit_code=0,
    )
    b = PodFacts(
        "pod-b",
        epochs=[2],
        resumed=[{"step": 15, "source": "remote"}],
        committed=[20, 30, 40],
        synced=[20, 30, 40],
        losses=losses(16, 40, 1.3, 0.45),
        outcome="completed",
        exit_code=0,
    )
    cmd = {"status": "completed", "epoch": 2, "step": 40, "checkpoint_step": 40}
    return RelayFacts("demo-sft", 40, a, b, cmd, remote_step=40, remote_epoch=2, wall_s=30.0)


def with_pod(facts: RelayFacts, pod: str, **changes: Any) -> RelayFacts:
    return dataclasses.replace(facts, **{pod: dataclasses.replace(getattr(facts, pod), **changes)})


def test_a_clean_relay_passes() -> None:
    facts = good()
    assert check_relay(facts) == []
    assert steps_lost(facts) == 0
    text = "\n".join(summary_lines(facts, "file:///r"))
    assert "steps lost at preemption: 0" in text and "loss: 5.600 at step 1 -> 0.450 at step 40" in text


@pytest.mark.parametrize(
    ("pod", "changes", "expected"),
    [
        (
            "b",
            {"resumed": [{"step": 0, "source": "cold_start"}], "losses": losses(1, 40, 5.6, 0.5)},
            "should have pulled its checkpoint from the remote",
        ),
        (
            "b",
            {"resumed": [{"step": 10, "source": "remote"}], "losses": losses(11, 40, 2.0, 0.5)},
            "not from pod-a's last synced checkpoint (step 15)",
        ),
        ("b", {"losses": losses(17, 40, 1.3, 0.45)}, "first trained step is 17, expected 16"),
        ("b", {"outcome": "failed", "exit_code": 4}, "should have completed the run"),
        ("b", {"losses": losses(16, 30, 1.3, 0.5)}, "should have reached step 40"),
        ("b", {"epochs": [3]}, "at epoch 2"),
        ("a", {"outcome": "fenced", "exit_code": 3}, "should have been preempted and exit 0"),
        (
            "a",
            {"synced": [10], "losses": losses(1, 15, 5.6, 1.5)},
            "did not reach the remote before the release",
        ),
        ("a", {"synced": []}, "synced no checkpoint"),
        ("b", {"losses": losses(16, 40, 5.9, 5.5)}, "did not continue from pod-a's weights"),
    ],
)
def test_each_failure_is_named(pod: str, changes: dict[str, Any], expected: str) -> None:
    problems = check_relay(with_pod(good(), pod, **changes))
    assert any(expected in p for p in problems), problems


def test_a_loss_that_does_not_fall_fails() -> None:
    facts = with_pod(good(), "a", losses=losses(1, 15, 1.0, 1.0))
    facts = with_pod(facts, "b", losses=losses(16, 40, 0.99, 0.98))
    assert any("the loss did not fall" in p for p in check_relay(facts))


def test_steps_lost_at_preemption_are_counted() -> None:
    facts = with_pod(good(), "a", losses=losses(1, 18, 5.6, 1.4), synced=[10, 15])
    assert steps_lost(facts) == 3
    assert any("3 step(s) of pod-a were lost" in p for p in check_relay(facts))


def test_commander_and_remote_must_agree() -> None:
    facts = dataclasses.replace(
        good(), commander={"status": "running", "epoch": 2, "step": 30, "checkpoint_step": 30}
    )
    facts = dataclasses.replace(facts, remote_step=30)
    problems = check_relay(facts)
    assert any("commander shows the run running" in p for p in problems)
    assert any("remote holds step 30" in p for p in problems)
    assert any("could not be asked" in p for p in check_relay(dataclasses.replace(good(), commander=None)))
