"""What in the staging directory is a complete checkpoint, and of which step (read-only; no lock needed).

The trainer writes into ``ckpt/_staging/`` (RELAY_OUTPUT_DIR); ``scan_staged`` is the one reading of the
completeness rules in trainer_blackbox/README.md §3, used by the commit (relay.ckpt.commit) and by the
recovery report (relay.ckpt.verify).  Formats: ``step_N`` (relay), ``checkpoint-N`` (Hugging Face),
``global_stepN`` (DeepSpeed), ``iter_N`` (Megatron, see relay.ckpt.megatron).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from relay.ckpt import megatron
from relay.ckpt.errors import CheckpointError
from relay.ckpt.layout import COMPLETE_MARKER
from relay.ids import INT64_MAX, parse_step

HF_TRAINER_STATE = "trainer_state.json"
DEEPSPEED_LATEST = "latest"
_MAX_MARKER_BYTES = 64 * 1024

# (pattern, format). The number in the name is the step unless a COMPLETE marker says otherwise.
STAGED_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^step_(\d+)$"), "relay"),
    (re.compile(r"^checkpoint-(\d+)$"), "hf"),
    (re.compile(r"^global_step(\d+)$"), "deepspeed"),
    (megatron.ITER_RE, "megatron"),
)


@dataclass(frozen=True)
class StagedCheckpoint:
    """A complete directory in the staging area, ready to commit."""

    path: Path
    step: int
    format: str  # "relay" (step_N), "hf" (checkpoint-N), "deepspeed" (global_stepN), "megatron" (iter_N)
    marker: str = (
        COMPLETE_MARKER  # which rule made it complete: COMPLETE, trainer_state.json, latest, tracker
    )


def _read_marker_step(marker: Path) -> tuple[int | None, str | None]:
    """(step, problem) from a COMPLETE marker: the step its JSON ``{"step": N}`` names (None when it names
    none: empty, unreadable, not an object, no ``step`` or ``null``), or a problem when it names one that is
    not an integer in 0..INT64_MAX (NaN, 1e30, -1, 2.5, "5"): such a checkpoint is never committed."""
    try:
        with open(marker, "rb") as f:
            data = f.read(_MAX_MARKER_BYTES)
        doc = json.loads(data) if data.strip() else None
    except (OSError, ValueError, RecursionError):
        return None, None
    if not isinstance(doc, dict) or doc.get("step") is None:
        return None, None
    step = parse_step(doc["step"])
    if step is None:
        return (
            None,
            f"its {COMPLETE_MARKER} marker names step {str(doc['step'])[:40]}, not an integer in 0..{INT64_MAX}",
        )
    return step, None


def _json_object_file(path: Path) -> bool:
    """True when ``path`` is a regular file holding a complete JSON object (a torn write fails this)."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with open(path, "rb") as f:
            return isinstance(json.loads(f.read()), dict)
    except (OSError, ValueError):
        return False


def _deepspeed_latest_tag(staging_dir: Path) -> str | None:
    path = staging_dir / DEEPSPEED_LATEST
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", "replace").strip() or None
    except OSError:
        return None


def _match_staged_name(name: str) -> tuple[int, str] | None:
    """(step from the name, format) for a staged checkpoint directory name, else None."""
    for pattern, fmt in STAGED_PATTERNS:
        m = pattern.match(name)
        if m:
            return int(m.group(1)), fmt
    return None


@dataclass(frozen=True)
class InvalidStaged:
    """A complete staged directory that can never be committed (its step is out of range), and why."""

    path: Path
    reason: str


def find_complete_staged(staging_dir: Path) -> list[StagedCheckpoint]:
    """Complete staged checkpoints directly under ``staging_dir``, sorted by step (oldest first).

    Rules (also in trainer_blackbox/README.md): a directory named ``step_<N>``, ``checkpoint-<N>`` or
    ``global_step<N>`` is complete when it holds a ``COMPLETE`` file (written last; JSON
    ``{"step": N}`` in it wins over the name); or, for ``checkpoint-<N>``, when it holds a
    ``trainer_state.json`` that parses (the Hugging Face Trainer writes it last); or, for
    ``global_step<N>``, when ``staging_dir/latest`` names that tag (DeepSpeed writes it after the tag); or,
    for ``iter_<N>``, when ``staging_dir/latest_checkpointed_iteration.txt`` names N (Megatron writes it
    after every rank saved; see relay.ckpt.megatron).
    Anything else -- a directory still being written -- is left alone.  A complete directory whose step
    is not an integer in 0..INT64_MAX is not listed (see :func:`scan_staged`).
    """
    return scan_staged(staging_dir)[0]


def scan_staged(staging_dir: Path) -> tuple[list[StagedCheckpoint], list[InvalidStaged]]:
    """(complete staged checkpoints sorted by step, complete ones with an impossible step).

    The second list is what the commit moves to ``ckpt/_rejected``: a name like
    ``step_99999999999999999999999`` or a marker ``{"step": 1e30}`` would otherwise become a checkpoint
    the commander cannot store and every later step would count as older.
    """
    staging_dir = Path(staging_dir)
    try:
        entries = list(os.scandir(staging_dir))
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise CheckpointError(f"cannot list staging directory {staging_dir}: {exc.strerror or exc}") from None
    ds_tag: str | None = None
    ds_tag_read = False
    tracker: int | None = None
    tracker_read = False
    found: list[StagedCheckpoint] = []
    invalid: list[InvalidStaged] = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        matched = _match_staged_name(entry.name)
        if matched is None:
            continue
        name_step, fmt = matched
        path = Path(entry.path)
        marker = path / COMPLETE_MARKER
        if marker.is_file() and not marker.is_symlink():
            marker_step, problem = _read_marker_step(marker)
            step, how = (name_step if marker_step is None else marker_step), COMPLETE_MARKER
        elif fmt == "hf" and _json_object_file(path / HF_TRAINER_STATE):
            step, how, problem = name_step, HF_TRAINER_STATE, None
        elif fmt == "deepspeed":
            if not ds_tag_read:
                ds_tag, ds_tag_read = _deepspeed_latest_tag(staging_dir), True
            if ds_tag != entry.name:
                continue
            step, how, problem = name_step, DEEPSPEED_LATEST, None
        elif fmt == "megatron":
            if not tracker_read:
                tracker, tracker_read = megatron.read_tracker(staging_dir), True
            if tracker != name_step:
                continue
            step, how, problem = name_step, megatron.TRACKER_NAME, None
        else:
            continue
        if problem is None and parse_step(step) is None:
            problem = f"the step in its name ({step}) is larger than {INT64_MAX}"
        if problem is not None:
            invalid.append(InvalidStaged(path, problem))
            continue
        found.append(StagedCheckpoint(path, step, fmt, how))
    found.sort(key=lambda s: (s.step, s.path.name))
    invalid.sort(key=lambda s: s.path.name)
    return found, invalid
