"""Where a run's files live on the volume: one place that turns (relay_root, run_id) into paths.

Everything else (the worker, the commit, the remote pull, `relayctl status`) asks this module for a
path instead of joining strings, so the layout can change in one file. The run id is validated on
construction because it becomes a directory name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from relay.ids import validate_id

CKPT_DIR_FMT = "step_%08d"
COMPLETE_MARKER = "COMPLETE"
MANIFEST_NAME = "manifest.json"

# A committed checkpoint directory: step_ + at least 8 digits (%08d grows past 8 digits for huge steps).
COMMITTED_RE = re.compile(r"^step_(\d{8,})$")


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run under ``relay_root`` (``relay_root/runs/<run_id>/...``)."""

    relay_root: Path
    run_id: str

    def __post_init__(self) -> None:
        validate_id(self.run_id, "run_id")
        object.__setattr__(self, "relay_root", Path(self.relay_root))

    @property
    def run_dir(self) -> Path:
        return self.relay_root / "runs" / self.run_id

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "ckpt"

    @property
    def staging_dir(self) -> Path:
        """The trainer's RELAY_OUTPUT_DIR: it writes checkpoints here, the commit moves them out."""
        return self.ckpt_dir / "_staging"

    @property
    def final_dir(self) -> Path:
        """The trainer's RELAY_FINAL_DIR: its end-of-training export (relay.ckpt.final), emptied at each launch."""
        return self.run_dir / "final"

    @property
    def incoming_dir(self) -> Path:
        """Pulled checkpoints land here and are verified before they are renamed into ``ckpt/``."""
        return self.ckpt_dir / "_incoming"

    @property
    def trash_dir(self) -> Path:
        """Directories are renamed here (atomic) before being deleted, so a half-deleted tree is never
        mistaken for a checkpoint."""
        return self.ckpt_dir / "_trash"

    @property
    def rejected_dir(self) -> Path:
        """Staged directories that can never be committed (symlinks, special files) are parked here."""
        return self.ckpt_dir / "_rejected"

    @property
    def quarantine_dir(self) -> Path:
        """Committed checkpoints that failed verification are moved here by recovery (kept for forensics)."""
        return self.ckpt_dir / "_quarantine"

    @property
    def latest_link(self) -> Path:
        return self.ckpt_dir / "latest"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def events_file(self) -> Path:
        return self.run_dir / "events.jsonl"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def progress_file(self) -> Path:
        return self.run_dir / "progress.jsonl"

    @property
    def save_request_file(self) -> Path:
        """The trainer contract's save-request file (RELAY_SAVE_REQUEST_FILE): the worker asks for a save."""
        return self.run_dir / "save_request.json"

    @property
    def train_config_file(self) -> Path:
        return self.run_dir / "train_config.json"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / ".lock"

    @property
    def held_lease_file(self) -> Path:
        """The lease the worker process carrying this run holds (``relay.worker.held_lease``)."""
        return self.run_dir / "lease.json"

    @property
    def held_lease_lock(self) -> Path:
        """flock'ed by the live worker process that owns ``lease.json``."""
        return self.run_dir / "lease.lock"

    def step_dir(self, step: int) -> Path:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative integer (got {step!r})")
        return self.ckpt_dir / (CKPT_DIR_FMT % step)

    def ensure(self) -> None:
        """Create the run's directories (idempotent)."""
        for d in (self.run_dir, self.ckpt_dir, self.staging_dir, self.incoming_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)


def committed_step_dirs(layout: RunLayout) -> list[tuple[int, Path]]:
    """Every ``ckpt/step_N`` directory (not a symlink), newest first. No hashing, no manifest check."""
    out: list[tuple[int, Path]] = []
    try:
        entries = list(os.scandir(layout.ckpt_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = COMMITTED_RE.match(entry.name)
        if m and entry.is_dir(follow_symlinks=False):
            out.append((int(m.group(1)), Path(entry.path)))
    out.sort(key=lambda t: t[0], reverse=True)
    return out


def newest_committed_step(layout: RunLayout) -> int | None:
    """The newest step whose directory holds a manifest (the commit point is the rename, which happens
    only after the manifest is durable). Cheap: no hashing."""
    for step, path in committed_step_dirs(layout):
        if (path / MANIFEST_NAME).is_file():
            return step
    return None


def read_latest_step(layout: RunLayout) -> int | None:
    """The step ``ckpt/latest`` names, or None when it is missing or does not name a step directory."""
    try:
        target = os.readlink(layout.latest_link)
    except OSError:
        return None
    m = COMMITTED_RE.match(target)
    return int(m.group(1)) if m else None
