"""The worker settings that decide how fast a relay moves: pickup, warm standby, checkpoint cadence.

They are fields of :class:`relay.config.WorkerConfig` (which inherits them from here, so that module
stays one screenful of core settings); the environment variable of each is its upper-cased name, and
the generated reference in the README lists them with the rest.

- **Pickup**: a waiting pod's acquire is a long poll (``acquire_wait_s``): the commander answers the
  moment a release, an expiry, a submit or a cancel makes the run grantable.
- **Warm standby** (``standby``): while a pod waits for a named run held by another pod, it keeps the
  remote's newest checkpoint pulled and verified on its own volume (``relay.worker.standby``), so the
  handoff downloads only what changed since.
- **Cadence** (``save_every_s``): the worker asks the trainer for a checkpoint at a wall-time interval,
  fixed or chosen by Young/Daly from the measured save cost and the run's preemption rate
  (``relay.worker.cadence``; the request is the trainer contract's save-request file).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from relay.wiretypes import MAX_ACQUIRE_WAIT_S


def _env(name: str) -> dict[str, Any]:
    return {"env": name}


class SpeedSettings(BaseModel):
    """Pickup, warm standby and checkpoint cadence (see the module docstring)."""

    acquire_wait_s: float = Field(
        30.0,
        ge=0,
        le=MAX_ACQUIRE_WAIT_S,
        description="Long poll: while the run is held by another pod (or, in pool mode, none waits), each "
        "acquire asks the commander to hold it this long and answer the moment the run can be granted. "
        "0: plain polling with the acquire backoff. A commander without long polls gets plain polling.",
        json_schema_extra=_env("ACQUIRE_WAIT_S"),
    )
    standby: bool = Field(
        True,
        description="Warm standby: while waiting for a named run held by another pod, keep the newest "
        "checkpoint of its remote pulled and verified on this volume, fetching only files it lacks, so "
        "the handoff downloads only what changed. The remote is the run spec's, else this config's.",
        json_schema_extra=_env("STANDBY"),
    )
    standby_keep_last_n: int = Field(
        2,
        ge=1,
        description="Checkpoints a standby keeps on the volume (files shared between them are stored once).",
        json_schema_extra=_env("STANDBY_KEEP_LAST_N"),
    )
    standby_poll_s: float = Field(
        10.0,
        gt=0,
        description="How often a standby reads the remote's state for a newer checkpoint.",
        json_schema_extra=_env("STANDBY_POLL_S"),
    )
    save_every_s: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        None,
        description="Ask the trainer for a checkpoint when this many seconds passed since the last one "
        "(the save-request file of the trainer contract), bounding what a hard kill loses. 'auto': the "
        "Young/Daly interval sqrt(2 x save cost x time between preemptions), from the measured save "
        "pause and the run's lease history, never shorter than a save takes to be written, shown in the "
        "run's events. Empty: only the trainer's own saves.",
        json_schema_extra=_env("SAVE_EVERY_S"),
    )

    @field_validator("save_every_s", mode="before")
    @classmethod
    def _seconds_or_auto(cls, value: Any) -> Any:
        """One clear message for every bad value (a union would report each of its members)."""
        if value is None or value == "auto":
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = float("nan")
        if isinstance(value, bool) or not seconds > 0 or seconds == float("inf"):
            raise ValueError(f"must be a number of seconds > 0, or auto (got {value!r})")
        return seconds
