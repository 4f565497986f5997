"""The save-request file of the trainer contract (README.md, section 10), as a trainer reads it.

The worker asks for a checkpoint by replacing the file ``RELAY_SAVE_REQUEST_FILE`` names with a JSON
object whose ``id`` grows with each request.  A trainer that honours requests calls
:meth:`SaveRequests.pending` at each optimizer step end and saves that step when it returns True.  Most
calls cost one ``stat`` (the file is read only when it changed), so checking every step is free.

Stdlib only: the mock imports it, and a trainer in any environment can copy these thirty lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "RELAY_SAVE_REQUEST_FILE"


class SaveRequests:
    """Reads the worker's save requests; each request is reported once."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.handled = 0  # the highest request id acted on
        self._seen: tuple[int, int, int] | None = None  # (mtime_ns, inode, size) at the last read

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SaveRequests:
        env = os.environ if environ is None else environ
        raw = env.get(ENV_VAR, "").strip()
        return cls(Path(raw) if raw else None)

    def pending(self) -> bool:
        """Whether a request newer than the last one handled is waiting (then it counts as handled:
        save the step just completed)."""
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        key = (st.st_mtime_ns, st.st_ino, st.st_size)
        if key == self._seen:
            return False
        self._seen = key
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            request_id = int(doc["id"])
        except (OSError, ValueError, KeyError, TypeError):
            return False  # the worker replaces the file whole; anything else is not a request
        if request_id <= self.handled:
            return False
        self.handled = request_id
        return True
