"""Re-export of ``relay_inject.checkpoint`` (trainer_blackbox/inject/relay_inject/checkpoint.py), its one home: the same stdlib-only code
runs inside third-party trainer environments, where only the inject directory is on the path."""

from relay_inject.checkpoint import *  # noqa: F403
from relay_inject.checkpoint import __all__  # noqa: F401
