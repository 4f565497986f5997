"""``python -m relay.worker``: the same as ``relayctl worker``."""

import sys

from relay.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
