#!/usr/bin/env python3
"""Thin shim so `python tools/relayctl.py ...` works from a checkout without installing."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from relay.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
