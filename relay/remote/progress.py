"""A download progress bar for people at a terminal, and nothing for logs (a worker's output)."""

from __future__ import annotations

import sys
from typing import Any


def tty_progress(total: int, desc: str) -> Any | None:
    """A tqdm bar when stdout is a terminal, else None."""
    if not sys.stdout.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with huggingface_hub
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)
