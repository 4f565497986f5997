"""What can go wrong with a remote, as types: each says whether trying again may help (``retryable``)."""

from __future__ import annotations

from relay.urls import RemoteURLError


class RemoteError(Exception):
    """A remote operation failed. ``retryable`` says whether the same call may succeed later
    (429, 5xx, network); ``retry_after_s`` is the server's hint when it gave one."""

    def __init__(self, message: str, *, retryable: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class PullCancelled(RemoteError):
    """A pull stopped because its caller asked it to (a standby that got the lease)."""


class RemoteFencedError(RemoteError):
    """The remote holds a newer lease epoch than this push: this worker has been fenced off."""

    def __init__(self, *, remote_epoch: int, push_epoch: int, remote_step: int | None, where: str) -> None:
        held = f"step {remote_step}" if remote_step is not None else "no checkpoint yet"
        super().__init__(
            f"{where}: remote is at epoch {remote_epoch} ({held}), this push carries epoch "
            f"{push_epoch}; a newer lease holder owns the run, refusing to overwrite",
            retryable=False,
        )
        self.remote_epoch = remote_epoch
        self.push_epoch = push_epoch
        self.remote_step = remote_step


class RemoteAheadError(RemoteError):
    """A claim found the remote at an epoch at or above the lease's, and not by this lease's own claim:
    the commander granted an epoch the run's storage has already seen (a commander that lost its state,
    two holders of one epoch, or a poisoned ``relay/state.json``).  Nothing may train under this lease;
    the commander must jump its next grant past ``remote_epoch``."""

    def __init__(self, *, remote_epoch: int, lease_epoch: int, where: str) -> None:
        super().__init__(
            f"{where}: the remote is already at epoch {remote_epoch}, at or above this lease's epoch "
            f"{lease_epoch}: the commander granted an epoch the run's storage has seen (a commander that lost "
            "its state, or a poisoned relay/state.json); not training under it",
            retryable=False,
        )
        self.remote_epoch = remote_epoch
        self.lease_epoch = lease_epoch


class RemoteConfigError(RemoteError, RemoteURLError):
    """A remote URL or repo id we cannot use (by the rule of ``relay.urls``)."""


class RemoteCorruptError(RemoteError):
    """The remote holds something, but nothing usable: bad state.json, or no checkpoint verifies."""


class UnsafeLayoutError(RemoteError):
    """A ``file://`` remote whose own layout holds a symbolic link (or a file where a directory must be):
    the remote never follows one to create, write or delete, and cannot work around it."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(
            f"{where} {what}: a file:// remote's layout must hold real directories and files only; "
            "refusing to follow it (remove it, or point the remote elsewhere)",
            retryable=False,
        )
        self.where = where
