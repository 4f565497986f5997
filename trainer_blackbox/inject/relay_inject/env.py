"""The RELAY_* environment a trainer reads, parsed once (stdlib only, so the mock starts fast).

The worker sets these variables (see README.md); a bare run can set them by hand.  Parsing them in
one place gives every trainer the same defaults and the same one-line error for a bad value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EnvError", "RelayEnv"]


class EnvError(ValueError):
    """A RELAY_* variable is missing or malformed; str() is one line naming the variable."""


@dataclass(frozen=True)
class RelayEnv:
    """What the worker told this trainer process."""

    run_id: str
    mode: str
    epoch: int
    output_dir: Path
    resume_from: Path | None
    progress_file: Path | None
    train_config: Path | None
    final_dir: Path | None = None  # RELAY_FINAL_DIR: where the end-of-training export goes (README section 9)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RelayEnv:
        """Read the variables; RELAY_OUTPUT_DIR is the only required one (checkpoints must go somewhere)."""
        env = os.environ if environ is None else environ
        output = env.get("RELAY_OUTPUT_DIR", "").strip()
        if not output:
            raise EnvError("RELAY_OUTPUT_DIR is not set: the trainer has nowhere to write checkpoints")
        raw_epoch = env.get("RELAY_EPOCH", "0").strip() or "0"
        try:
            epoch = int(raw_epoch)
        except ValueError:
            raise EnvError(f"RELAY_EPOCH must be an integer (got {raw_epoch!r})") from None
        resume = env.get("RELAY_RESUME_FROM", "").strip()
        if resume and not Path(resume).is_dir():
            raise EnvError(f"RELAY_RESUME_FROM is not a directory: {resume}")
        progress = env.get("RELAY_PROGRESS_FILE", "").strip()
        config = env.get("RELAY_TRAIN_CONFIG", "").strip()
        final = env.get("RELAY_FINAL_DIR", "").strip()
        return cls(
            run_id=env.get("RELAY_RUN_ID", "").strip() or "local",
            mode=env.get("RELAY_MODE", "").strip(),
            epoch=epoch,
            output_dir=Path(output),
            resume_from=Path(resume) if resume else None,
            progress_file=Path(progress) if progress else None,
            train_config=Path(config) if config else None,
            final_dir=Path(final) if final else None,
        )
