"""The save-request reader (trainer contract, "Save requests") for the trainers of this package.

One copy of the contract's reader exists: ``relay_inject/save_request.py``, stdlib only, because the
instrumentation carries it into trainers' own environments.  The mock (run as a plain script) loads that
file by its path, rather than keeping a second copy that could drift.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "relay_inject.save_request"
_PATH = Path(__file__).resolve().parent / "inject" / "relay_inject" / "save_request.py"


def _load():  # type: ignore[no-untyped-def]
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


_module = _load()
SaveRequests = _module.SaveRequests
ENV_VAR: str = _module.ENV_VAR

__all__ = ["ENV_VAR", "SaveRequests"]
