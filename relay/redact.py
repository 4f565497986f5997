"""How a secret is shown: one mask, and one rule for which names hold secrets.

Secrets reach terminals, logs, shell history, events and API answers by many roads: the worker's
config dump, its one-line config errors, the printed ``docker run`` / ``lium up`` lines, a run
spec's callback header. Each of them masks with the same string and decides "is this a secret?"
by the same rule, so a test that looks for ``***`` in one place means the same everywhere.

Stdlib only and import-free: the wire schema, the worker config and the printers all import it.
"""

from __future__ import annotations

import re

MASK = "***"

# The worker's secret settings, by environment variable and by config key.
SECRET_ENV = frozenset({"HF_TOKEN", "RELAY_SHARED_SECRET"})
SECRET_KEYS = frozenset({"hf_token", "relay_shared_secret"})
# Other variables that look like credentials are secrets too (WANDB_API_KEY, AWS_SECRET_ACCESS_KEY...).
_SECRET_NAME_RE = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY")


def is_secret_name(name: str) -> bool:
    """Whether the value of the variable or key ``name`` must be masked wherever it is shown."""
    return name in SECRET_ENV or name in SECRET_KEYS or bool(_SECRET_NAME_RE.search(name.upper()))
