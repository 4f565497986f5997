"""The lifecycle table: every state reachable, only listed moves allowed, fencing possible while holding."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, load_config
from relay.schema import RunSpec
from relay.worker import lifecycle
from relay.worker.lifecycle import EXIT_CODES, TRANSITIONS, IllegalTransition, Lifecycle, State
from relay.worker.session import effective_config

HOLDING = {
    State.RECOVERING,
    State.LAUNCHING,
    State.SUPERVISING,
    State.RESTARTING,
    State.STOPPING,
    State.FINALIZING,
}


def cfg():  # type: ignore[no-untyped-def]
    return load_config(None, env={"COMMANDER_URL": "http://127.0.0.1:9", "RUN_ID": "r"})


def test_every_state_is_reachable_and_done_is_terminal() -> None:
    seen, todo = {State.IDLE}, [State.IDLE]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(State)
    assert TRANSITIONS[State.DONE] == frozenset()
    assert TRANSITIONS[State.FENCED] == {State.DONE}


def test_every_phase_holding_the_lease_can_be_fenced_and_nothing_else_is() -> None:
    for state in State:
        assert (State.FENCED in TRANSITIONS[state]) == (state in HOLDING | {State.RELEASING}), state
    assert lifecycle.HOLDING == HOLDING | {State.RELEASING}


@pytest.mark.parametrize("src", list(State))
def test_goto_walks_the_table(src: State) -> None:
    for dst in State:
        walker = Lifecycle(state=src)
        if dst in TRANSITIONS[src]:
            walker.goto(dst)
            assert walker.state is dst and walker.history[-1][1] is dst
        else:
            with pytest.raises(IllegalTransition):
                walker.goto(dst)
            assert walker.state is src


def test_exit_codes_are_distinct_and_documented() -> None:
    assert sorted(EXIT_CODES) == [0, 1, 2, 3, 4, 5]
    from relay.worker import main

    for code in EXIT_CODES:
        assert f"\n{code}   " in main.__doc__  # type: ignore[operator]


def test_a_submitted_spec_decides_what_is_trained() -> None:
    base = cfg()
    spec = RunSpec(
        mode="rl", train={"max_steps": 5}, remote="file:///tmp/r", max_restarts=1, max_duration_s=60
    )
    eff = effective_config(base, spec)
    assert (eff.mode, eff.train, eff.remote, eff.max_restarts, eff.max_runtime_s) == (
        "rl",
        {"max_steps": 5},
        "file:///tmp/r",
        1,
        60,
    )
    assert eff.worker_id == base.worker_id and effective_config(base, None) is base
    # the commander refuses such a spec at submit; the worker still checks what a grant carries
    unchecked = RunSpec.model_construct(**{**RunSpec().model_dump(), "remote": "s3://nope"})
    with pytest.raises(ConfigError, match="remote.*run spec"):
        effective_config(base, unchecked)
