"""The local checkpoint store: layout, atomic commit, install of a pulled copy, manifest, verification.

Light to import (no torch, no huggingface_hub); ``filelock`` is imported when a lock is taken.
"""

from relay.ckpt.commit import (
    StagedCheckpoint,
    checkpoint_lock,
    commit_checkpoint,
    commit_newest_staged,
    find_complete_staged,
    prune_local,
    repair_latest,
    set_latest,
)
from relay.ckpt.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointLockTimeout,
    InvalidStagedCheckpoint,
    ManifestError,
    ManifestMissing,
    StaleStagedCheckpoint,
)
from relay.ckpt.install import install_pulled, same_local
from relay.ckpt.layout import (
    CKPT_DIR_FMT,
    COMPLETE_MARKER,
    MANIFEST_NAME,
    RunLayout,
    committed_step_dirs,
    newest_committed_step,
    read_latest_step,
)
from relay.ckpt.manifest import (
    FORMAT_VERSION,
    CommittedCheckpoint,
    FileEntry,
    Manifest,
    read_manifest,
)
from relay.ckpt.verify import (
    RecoveryScan,
    SkippedCheckpoint,
    VerifyResult,
    find_newest_verified,
    latest_committed,
    read_committed,
    recover_local,
    verify_checkpoint,
)

__all__ = [
    "CKPT_DIR_FMT",
    "COMPLETE_MARKER",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointLockTimeout",
    "CommittedCheckpoint",
    "FileEntry",
    "InvalidStagedCheckpoint",
    "Manifest",
    "ManifestError",
    "ManifestMissing",
    "RecoveryScan",
    "RunLayout",
    "SkippedCheckpoint",
    "StagedCheckpoint",
    "StaleStagedCheckpoint",
    "VerifyResult",
    "checkpoint_lock",
    "commit_checkpoint",
    "commit_newest_staged",
    "committed_step_dirs",
    "find_complete_staged",
    "find_newest_verified",
    "install_pulled",
    "latest_committed",
    "newest_committed_step",
    "prune_local",
    "read_committed",
    "read_latest_step",
    "read_manifest",
    "recover_local",
    "repair_latest",
    "same_local",
    "set_latest",
    "verify_checkpoint",
]
