"""``<run_id>/relay/state.json``: the one document on a remote that says who may publish and what is newest.

Format 2 (what this version writes)::

    {"format_version": 2, "run_id": "r1",
     "epoch": 7,                # the fencing epoch: the newest lease that claimed the remote or published
     "claimed_by": "lease-id",  # the lease of that epoch (its claim); null when an older writer published
     "step": 120,               # the newest published checkpoint, or null: "claimed, no checkpoint yet"
     "manifest_sha256": "...",  # of that checkpoint's manifest.json (null with step)
     "step_epoch": 6,           # the epoch that published that checkpoint (null with step)
     "updated_at": "..."}

A new lease holder *claims* the remote before it trains (``epoch`` becomes its own, the checkpoint
stays), so from then on every older epoch's push is refused where it would publish. Format 1 (no
claims: ``step`` and ``manifest_sha256`` always set, ``epoch`` the publisher's) is still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from relay.ckpt.manifest import now_iso
from relay.ids import INT64_MAX, id_problem
from relay.remote.errors import RemoteCorruptError

STATE_FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MAX_STATE_BYTES = 1024 * 1024
#: no commander can grant, nor hear of, an epoch or step past a signed 64-bit integer (its SQLite column)
MAX_COUNT = INT64_MAX


@dataclass(frozen=True)
class RemoteState:
    run_id: str
    epoch: int
    step: int | None
    manifest_sha256: str | None
    step_epoch: int | None = None
    claimed_by: str | None = None
    revision: str | None = None
    updated_at: str | None = None

    @classmethod
    def published(cls, run_id: str, *, step: int, epoch: int, manifest_sha256: str, claimed_by: str | None):
        """The state a push of ``step`` under ``epoch`` leaves."""
        return cls(run_id, epoch, step, manifest_sha256, epoch, claimed_by, updated_at=now_iso())

    @property
    def has_checkpoint(self) -> bool:
        return self.step is not None

    def describe(self) -> str:
        held = (
            f"step {self.step} (published at epoch {self.step_epoch})"
            if self.step is not None
            else "no checkpoint"
        )
        return f"epoch {self.epoch}, {held}"

    def to_json_bytes(self, **extra: object) -> bytes:
        doc = {
            "format_version": STATE_FORMAT_VERSION,
            "run_id": self.run_id,
            "epoch": self.epoch,
            "claimed_by": self.claimed_by,
            "step": self.step,
            "manifest_sha256": self.manifest_sha256,
            "step_epoch": self.step_epoch,
            "updated_at": self.updated_at or now_iso(),
            **extra,
        }
        return (json.dumps(doc, indent=1) + "\n").encode()

    @classmethod
    def from_json_bytes(
        cls, data: bytes, *, origin: str, revision: str | None = None
    ) -> tuple[RemoteState, dict]:
        """Parse a state.json; returns the state and the raw document. Raises RemoteCorruptError."""
        if len(data) > MAX_STATE_BYTES:
            raise RemoteCorruptError(f"{origin}: state.json too large ({len(data)} bytes)")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise RemoteCorruptError(f"{origin}: state.json is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise RemoteCorruptError(f"{origin}: state.json must be a JSON object")
        version = doc.get("format_version", 1)
        if version not in READABLE_FORMATS:
            raise RemoteCorruptError(
                f"{origin}: state.json format_version {version!r} is not one this version reads {READABLE_FORMATS}"
            )
        run_id = doc.get("run_id")
        if id_problem(run_id):
            raise RemoteCorruptError(f"{origin}: state.json run_id {id_problem(run_id)}")
        epoch = _count(doc, "epoch", origin, optional=False)
        step = _count(doc, "step", origin, optional=version >= 2)
        sha = doc.get("manifest_sha256")
        if step is None and sha is not None or step is not None and not _is_sha(sha):
            raise RemoteCorruptError(
                f"{origin}: state.json manifest_sha256 must be 64 hex characters with step"
            )
        step_epoch = _count(doc, "step_epoch", origin, optional=True) if version >= 2 else epoch
        if (step is None) != (step_epoch is None) or (step_epoch is not None and step_epoch > epoch):
            raise RemoteCorruptError(
                f"{origin}: state.json step_epoch {step_epoch!r} does not fit step {step!r} at epoch {epoch}"
            )
        claimed = doc.get("claimed_by")
        if claimed is not None and not (isinstance(claimed, str) and 0 < len(claimed) <= 128):
            raise RemoteCorruptError(f"{origin}: state.json claimed_by must be a lease id or null")
        updated = doc.get("updated_at")
        state = cls(
            run_id=run_id,
            epoch=epoch,
            step=step,
            manifest_sha256=sha,
            step_epoch=step_epoch,
            claimed_by=claimed,
            revision=revision,
            updated_at=updated if isinstance(updated, str) else None,
        )
        return state, doc


def _count(doc: dict, key: str, origin: str, *, optional: bool) -> int | None:
    v = doc.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_COUNT:
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:40] + "..."
        raise RemoteCorruptError(
            f"{origin}: state.json {key} must be an integer from 0 to 2**63-1 (got {shown})"
        )
    return v


def _is_sha(v: object) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
