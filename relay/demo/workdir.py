"""The demo's work directory: made (or a named empty one used), kept on failure or --keep, else removed."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def prepare_workdir(named: Path | None, pods: tuple[str, ...]) -> tuple[Path, bool]:
    """The work directory with its layout (commander/, remote/, assets/, one per pod, logs/), and
    whether the demo created it (only then is it removed whole at the end)."""
    if named is not None:
        wd = named.expanduser().resolve()
        created = not wd.exists()
        wd.mkdir(parents=True, exist_ok=True)
    else:
        wd = Path(tempfile.mkdtemp(prefix="relay-demo-")).resolve()
        created = True
    for sub in ("commander", "remote", "assets", *pods, "logs"):
        (wd / sub).mkdir(exist_ok=True)
    return wd, created


def kept_message(wd: Path, pods: tuple[str, ...]) -> str:
    shown = " and ".join(f"{p}/" for p in pods)
    return (
        f"relay demo: directories kept in {wd}: commander/ (SQLite state), remote/ (the file:// remote), "
        f"{shown} (each pod's volume), logs/ (commander and worker output)"
    )


def finish_workdir(wd: Path, *, created: bool, keep: bool) -> None:
    """Remove what the demo made, unless kept: a directory the user named is emptied, not removed."""
    if keep:
        return
    if created:
        shutil.rmtree(wd, ignore_errors=True)
        return
    for entry in wd.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
