"""The relay trainer side: launchers, built-in trainers, the mock, and the injected instrumentation.

``trainer_blackbox/inject/`` is the directory the relay puts first on a trainer's PYTHONPATH (its
``sitecustomize`` instruments any transformers Trainer). Its package ``relay_inject`` is stdlib-only and is
the one home of the pieces every trainer shares (RELAY_* parsing, progress lines, SIGTERM, COMPLETE); it is
made importable here too, under the same top-level name, so the built-in trainers use the same code.
"""

import os as _os
import sys as _sys

INJECT_DIR = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "inject")
if INJECT_DIR not in _sys.path:
    _sys.path.append(INJECT_DIR)
