"""Checkpoint-store exceptions: every failure a caller can see has a name and a one-line message.

Callers (the worker, `relayctl`) print ``str(exc)`` to a user, so each message says what is wrong
and where, never a raw traceback from the filesystem or the JSON parser.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class for every checkpoint-store failure."""


class InvalidStagedCheckpoint(CheckpointError):
    """A staged directory that can never be committed (symlinks, special files, a foreign manifest.json).

    The commit moves such a directory to ``ckpt/_rejected/`` so it is not retried forever.
    """


class StaleStagedCheckpoint(CheckpointError):
    """A staged checkpoint whose step is not newer than the newest committed one; it was discarded."""

    def __init__(self, step: int, newest: int, path: str) -> None:
        self.step = step
        self.newest = newest
        self.path = path
        super().__init__(
            f"staged checkpoint {path} (step {step}) is not newer than committed step {newest}; discarded"
        )


class ManifestError(CheckpointError):
    """A manifest.json that is missing, unreadable, or does not describe a safe, well-formed checkpoint."""


class ManifestMissing(ManifestError):
    """No manifest.json: the directory was never committed (or the commit never finished)."""


class CheckpointCorruptError(CheckpointError):
    """Bytes on disk do not match the manifest (size or sha256), or a listed file is missing."""


class CheckpointLockTimeout(CheckpointError):
    """Another process held the run's checkpoint lock for longer than we were willing to wait."""
