"""Runs as jobs: what a submitted spec means for its run, decided without touching the store.

A run submitted through ``POST /api/runs`` carries its spec in ``runs.spec_json``.  These pure
functions say what it becomes (a pending run row), whether a second submit of the same run id is
the same job (answered as is) or a conflict, what a worker is handed in a grant (the restarts and
running time the run has *left*, the callback auth header masked), and whether a failed run may
be queued again.  The lease manager applies them.
"""

from __future__ import annotations

import secrets
import time

from relay.commander.errors import SpecConflictError
from relay.commander.store import RunRow
from relay.schema import RunSpec, RunStatus


def new_run_id(wall: float) -> str:
    """A run id for a spec submitted without one: sortable by time, unique by its random suffix."""
    return f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(wall))}-{secrets.token_hex(3)}"


def spec_of(row: RunRow) -> RunSpec | None:
    """The run's submitted spec (None for a run a worker started by id)."""
    return RunSpec.model_validate_json(row.spec_json) if row.spec_json else None


def submitted_run(spec: RunSpec, wall: float) -> RunRow:
    """The pending run a new submit creates (``spec.run_id`` set)."""
    assert spec.run_id is not None
    return RunRow(
        run_id=spec.run_id,
        status=RunStatus.pending,
        created_at=wall,
        updated_at=wall,
        mode=spec.mode,
        priority=spec.priority,
        max_restarts=spec.max_restarts,
        spec_json=spec.model_dump_json(),
    )


def check_resubmit(row: RunRow, spec: RunSpec) -> None:
    """A submit for an existing run is the same job only with the same spec; else SpecConflictError.

    So a backend may retry a submit whose answer it lost; a different spec for the same run id, or a
    spec for a run a worker started by id, is refused naming what differs.
    """
    stored = spec_of(row)
    if stored is None:
        raise SpecConflictError(
            f"run {row.run_id} already exists and was not submitted (a worker started it by id); "
            "submit under another run_id",
            status=row.status,
        )
    before, wanted = stored.model_dump(mode="json"), spec.model_dump(mode="json")
    if before == wanted:
        return
    differs = sorted(key for key in wanted if before.get(key) != wanted.get(key))
    raise SpecConflictError(
        f"run {row.run_id} was submitted with a different spec (differs in: {', '.join(differs)}); "
        "submit the same spec, or use another run_id",
        status=row.status,
        detail={"differs": differs},
    )


def granted_spec(row: RunRow) -> RunSpec | None:
    """The spec a worker gets: the restarts and running time the run has left, the auth header masked."""
    spec = spec_of(row)
    if spec is None:
        return None
    update: dict[str, object] = {"max_restarts": max(0, spec.max_restarts - row.restarts)}
    if spec.max_duration_s is not None:
        update["max_duration_s"] = max(1.0, spec.max_duration_s - row.active_s)
    return spec.model_copy(update=update).masked()


def may_restart(row: RunRow) -> bool:
    """A failed submitted run goes back to the queue while it has restarts and running time left."""
    if row.max_restarts is None or row.restarts >= row.max_restarts:
        return False
    spec = spec_of(row)
    return spec is None or spec.max_duration_s is None or row.active_s < spec.max_duration_s
