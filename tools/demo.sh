#!/usr/bin/env bash
# The main job, on a fresh machine: sets up .venv, then runs the relay demo (extra args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .venv/.relay-installed ]; then
  echo "demo: first run: setting up .venv (a few minutes; progress below), then the demo starts" >&2
fi
bash tools/bootstrap.sh
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/relayctl demo "$@"
