"""Did the relay work?  The demo's closing checks and summary, as pure functions of what was observed.

Kept apart from the orchestration so that every failure the demo can report is a named, tested
sentence: the demo must exit non-zero with a clear message when, say, pod B cold-started instead of
resuming from pod A's checkpoint, even though both workers "succeeded".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.demo.timeline import PodFacts


@dataclass
class RelayFacts:
    run_id: str
    steps: int
    a: PodFacts
    b: PodFacts
    commander: (
        dict[str, Any] | None
    )  # status, epoch, step, checkpoint_step of the run, as the commander has it
    remote_step: int | None
    remote_epoch: int | None
    wall_s: float


def steps_lost(facts: RelayFacts) -> int | None:
    """Steps pod A trained that pod B did not resume from (0 when A's last step was handed on)."""
    if facts.a.last_step is None or facts.b.resume_step is None:
        return None
    return max(0, facts.a.last_step - facts.b.resume_step)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def check_relay(facts: RelayFacts) -> list[str]:
    """Every way the observed run falls short of a clean relay, one sentence each (empty: it worked)."""
    return _check_pod_a(facts.a) + _check_pod_b(facts) + _check_records(facts) + _check_learning(facts)


def _check_pod_a(a: PodFacts) -> list[str]:
    """Pod A trained, synced, was preempted, and handed its last step on."""
    problems: list[str] = []
    if a.epochs != [1]:
        problems.append(
            f"pod-a should have held the lease once, at epoch 1 (it acquired at epochs {a.epochs})"
        )
    if a.outcome != "preempted" or a.exit_code != 0:
        problems.append(
            f"pod-a should have been preempted and exit 0 (outcome {a.outcome}, exit code {a.exit_code}: "
            f"{a.outcome_message or 'no detail'})"
        )
    if not a.synced:
        problems.append("pod-a synced no checkpoint to the remote")
    elif a.last_step is not None and a.synced[-1] != a.last_step:
        problems.append(
            f"pod-a's last synced checkpoint is step {a.synced[-1]} but it trained to step {a.last_step}: "
            "the checkpoint saved on SIGTERM did not reach the remote before the release"
        )
    return problems


def _check_pod_b(facts: RelayFacts) -> list[str]:
    """Pod B took the next epoch, resumed from A's checkpoint through the remote, and finished."""
    a, b = facts.a, facts.b
    problems: list[str] = []
    if b.epochs != [2]:
        problems.append(
            f"pod-b should have taken the lease once, at epoch 2 (it acquired at epochs {b.epochs})"
        )
    if b.resume_source != "remote":
        problems.append(
            f"pod-b should have pulled its checkpoint from the remote (its volume was empty); it resumed from "
            f"{b.resume_source or 'nothing'}"
        )
    if a.synced and b.resume_step != a.synced[-1]:
        problems.append(
            f"pod-b resumed from step {b.resume_step}, not from pod-a's last synced checkpoint (step {a.synced[-1]})"
        )
    if b.resume_step is not None and b.first_step is not None and b.first_step != b.resume_step + 1:
        problems.append(
            f"pod-b's first trained step is {b.first_step}, expected {b.resume_step + 1} (resume step + 1)"
        )
    if b.outcome != "completed" or b.exit_code != 0:
        problems.append(
            f"pod-b should have completed the run and exit 0 (outcome {b.outcome}, exit code {b.exit_code}: "
            f"{b.outcome_message or 'no detail'})"
        )
    if b.last_step != facts.steps:
        problems.append(f"the run should have reached step {facts.steps}; its last step is {b.last_step}")
    lost = steps_lost(facts)
    if lost:
        problems.append(f"{lost} step(s) of pod-a were lost at the preemption")
    return problems


def _check_records(facts: RelayFacts) -> list[str]:
    """The commander and the remote agree on how the run ended."""
    problems: list[str] = []
    cmd = facts.commander
    if cmd is None:
        problems.append("the commander could not be asked about the run at the end")
    else:
        if cmd.get("status") != "completed" or cmd.get("epoch") != 2:
            problems.append(
                f"the commander shows the run {cmd.get('status')} at epoch {cmd.get('epoch')}, expected completed at epoch 2"
            )
        if cmd.get("checkpoint_step") != facts.steps:
            problems.append(
                f"the commander's latest checkpoint is step {cmd.get('checkpoint_step')}, expected {facts.steps}"
            )
    if facts.remote_step != facts.steps or facts.remote_epoch != 2:
        problems.append(
            f"the remote holds step {facts.remote_step} at epoch {facts.remote_epoch}, expected step {facts.steps} at epoch 2"
        )
    return problems


def _check_learning(facts: RelayFacts) -> list[str]:
    """The model learnt, and B continued from A's weights rather than from scratch."""
    a, b = facts.a, facts.b
    problems: list[str] = []
    losses = [v for _, v in sorted({**a.losses, **b.losses}.items()) if v is not None]
    if len(losses) < 6:
        problems.append(f"too few loss values were reported ({len(losses)}) to see the loss fall")
    elif not _mean(losses[-3:]) < 0.8 * _mean(losses[:3]):
        problems.append(
            f"the loss did not fall: first steps {_mean(losses[:3]):.3f}, last steps {_mean(losses[-3:]):.3f}"
        )
    a_first = a.losses.get(a.first_step) if a.first_step is not None else None
    b_first = b.losses.get(b.first_step) if b.first_step is not None else None
    if a_first is not None and b_first is not None and not b_first < a_first:
        problems.append(
            f"pod-b's first loss ({b_first:.3f}) is not below pod-a's first loss ({a_first:.3f}): "
            "it did not continue from pod-a's weights"
        )
    return problems


def _range(p: PodFacts) -> str:
    if p.first_step is None:
        return "no steps"
    n = len(p.losses)
    return f"steps {p.first_step}-{p.last_step} ({n} step{'s' if n != 1 else ''})"


def _steps_list(steps: list[int]) -> str:
    return ", ".join(str(s) for s in steps) if steps else "none"


def summary_lines(facts: RelayFacts, remote_url: str) -> list[str]:
    """The closing summary, one fact per line."""
    a, b = facts.a, facts.b
    cmd = facts.commander or {}
    lines = [
        f"  run {facts.run_id}: {cmd.get('status', '?')} (commander: epoch {cmd.get('epoch', '?')}, "
        f"step {cmd.get('step', '?')}, checkpoint step {cmd.get('checkpoint_step', '?')})",
    ]
    for p in (a, b):
        epochs = ", ".join(str(e) for e in p.epochs) or "-"
        start = ""
        if p.resume_source == "remote":
            start = f"resumed from step {p.resume_step} (pulled from the remote), "
        elif p.resume_source == "cold_start":
            start = "cold start, "
        elif p.resume_source == "local":
            start = f"resumed from step {p.resume_step} (its own volume), "
        lines.append(
            f"  {p.name}: epoch {epochs}, {start}trained {_range(p)}, checkpoints synced: {_steps_list(p.synced)}; "
            f"{p.outcome or 'no outcome'}, exit code {p.exit_code}"
        )
    lost = steps_lost(facts)
    lines.append(
        f"  steps lost at preemption: {lost if lost is not None else '?'} "
        f"(pod-a's last step {a.last_step}, pod-b resumed from step {b.resume_step})"
    )
    losses = {**a.losses, **b.losses}
    known = [(s, v) for s, v in sorted(losses.items()) if v is not None]
    if known:
        (s0, l0), (s1, l1) = known[0], known[-1]
        lines.append(f"  loss: {l0:.3f} at step {s0} -> {l1:.3f} at step {s1}")
    lines.append(f"  remote {remote_url}: step {facts.remote_step}, epoch {facts.remote_epoch}")
    lines.append(f"  wall time: {facts.wall_s:.1f}s")
    return lines
