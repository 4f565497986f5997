"""The run's progress as this lease knows it: one owner, one writer per field.

Three parts of the worker learn something about where the run stands, and several read it (the
reporter, state.json, the release).  So that a reader never has to ask who last wrote what, each
field has exactly one writer, and the writers are the parts that know:

=================  ====================================================================
field              written only by
=================  ====================================================================
``step``,          the supervisor: the resume step at each launch, then every progress
``metrics``        signal of the trainer (:meth:`RunProgress.trained`)
``checkpoint``     the checkpoints (:meth:`RunProgress.committed`): each commit, and the
                   checkpoint recovery resumed from
``remote_step``,   the sync port (:meth:`RunProgress.synced`): the remote's step read at
``remote_revision``  recovery, then each successful push
=================  ====================================================================

Readers subscribe with :meth:`RunProgress.subscribe` (state.json is rewritten on every change that
matters) or read the fields when they need them (each report).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("relay.worker")


@dataclass(frozen=True)
class LocalCheckpoint:
    """The newest committed checkpoint on this volume, as reports name it."""

    step: int
    path: str


class RunProgress:
    """Step, metrics, newest checkpoint and the remote's step for one lease (see the module's table)."""

    def __init__(self) -> None:
        self.step = 0
        self.metrics: dict[str, float] | None = None
        self.checkpoint: LocalCheckpoint | None = None
        self.remote_step: int | None = None
        self.remote_revision: str | None = None
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, fn: Callable[[], None]) -> None:
        """``fn()`` after every change of the checkpoint or the remote step (not every training step)."""
        self._listeners.append(fn)

    # -- the writers ----------------------------------------------------------------------------

    def trained(self, step: int, metrics: dict[str, float] | None = None) -> None:
        """The supervisor: the trainer is at ``step`` (metrics replace the last ones when given)."""
        self.step = step
        if metrics:
            self.metrics = dict(metrics)

    def committed(self, step: int, path: str) -> None:
        """The checkpoints: ``step`` is now the newest checkpoint on the volume."""
        self.checkpoint = LocalCheckpoint(step, path)
        self._changed()

    def synced(self, step: int | None, revision: str | None = None) -> None:
        """The sync port: the remote holds ``step`` (at ``revision``)."""
        self.remote_step = step
        self.remote_revision = revision
        self._changed()

    # -- the readers ----------------------------------------------------------------------------

    def checkpoint_ref(self) -> Any:
        """The checkpoint as the wire names it (``schema.CheckpointRef``), or None."""
        from relay.schema import CheckpointRef

        ckpt = self.checkpoint
        if ckpt is None:
            return None
        revision = self.remote_revision if self.remote_step == ckpt.step else None
        return CheckpointRef(step=ckpt.step, path=ckpt.path, remote_revision=revision)

    def release_fields(self) -> dict[str, Any]:
        """Step, checkpoint and remote step for the release: the last word reaches the commander even
        when the final report did not get through in its time budget."""
        try:
            return {
                "step": max(0, int(self.step)),
                "checkpoint": self.checkpoint_ref(),
                "remote_step": self.remote_step,
            }
        except Exception as exc:  # a malformed local value must not block the release
            log.warning("release without final progress: %s", exc)
            return {}

    def _changed(self) -> None:
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:  # pragma: no cover - a reader must never break a writer
                log.exception("progress listener failed")
