"""Small builders for checkpoint tests (also used by tests/remote)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from relay.ckpt import CommittedCheckpoint, RunLayout, commit_newest_staged

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_files(step: int, big: int = 256 * 1024) -> dict[str, bytes]:
    """A weights file that changes every step, an optimizer shard, a config that never changes."""
    return {
        "model.safetensors": os.urandom(big),
        "optim/shard0.pt": os.urandom(big // 4),
        "config.json": b'{"hidden": 8}',
        "trainer_state.json": json.dumps({"global_step": step}).encode(),
    }


def stage_checkpoint(
    layout: RunLayout,
    step: int,
    files: dict[str, bytes] | None = None,
    *,
    name: str | None = None,
    marker: bool = True,
    marker_step: int | None = None,
) -> Path:
    layout.ensure()
    d = layout.staging_dir / (name or f"step_{step}")
    d.mkdir(parents=True)
    for rel, data in (files if files is not None else default_files(step)).items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    if marker:
        (d / "COMPLETE").write_text(json.dumps({"step": marker_step}) if marker_step is not None else "")
    return d


def make_committed(
    layout: RunLayout,
    step: int,
    files: dict[str, bytes] | None = None,
    *,
    epoch: int = 1,
    keep_last_n: int = 100,
) -> CommittedCheckpoint:
    stage_checkpoint(layout, step, files)
    ckpt = commit_newest_staged(layout, epoch=epoch, keep_last_n=keep_last_n)
    assert ckpt is not None and ckpt.step == step
    return ckpt


def run_py(
    code: str, *args: str, timeout: float = 60, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter with the repo importable."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=str(REPO_ROOT),
    )
