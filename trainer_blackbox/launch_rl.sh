#!/usr/bin/env bash
# Start the RL (GRPO) trainer for the relay worker: $SLIME_RL_CMD, the mock (RELAY_TRAINER=mock) or the
# built-in trainer_blackbox/rl.py.  The contract (environment, checkpoints, SIGTERM) is trainer_blackbox/README.md.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" rl "$@"
