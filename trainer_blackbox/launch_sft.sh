#!/usr/bin/env bash
# Start the SFT trainer for the relay worker: $SLIME_SFT_CMD, the mock (RELAY_TRAINER=mock) or the built-in
# trainer_blackbox/sft.py.  The contract (environment, checkpoints, SIGTERM) is trainer_blackbox/README.md.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" sft "$@"
