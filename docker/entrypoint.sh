#!/usr/bin/env bash
# relay-trainer container entrypoint: one image, two roles.
#
#   entrypoint.sh serve [ARGS]    the commander (`relayctl serve ARGS`), on a CPU box
#   entrypoint.sh [worker] [ARGS] a worker on a GPU pod (the default): `relayctl worker --check ARGS`,
#                                 then exec `relayctl worker ARGS`
#   entrypoint.sh status|cancel|submit|logs|demo|print-*  any other relayctl command
#   entrypoint.sh CMD [ARGS]      anything else is exec'd as is (e.g. `bash`)
#
# Why check first: a pod that starts with a typo in COMMANDER_URL or without its volume would
# otherwise burn GPU time until the worker trips over it. The worker checks itself
# (relay/worker/check.py: its config model, what a pod needs, the volume), so this script holds no
# rule of its own: every problem is one line on stderr, exit status 2, nothing acquired.
#
# The worker is exec'd, not run as a child, so the SIGTERM that a pod gets at preemption reaches
# it directly from tini (it then checkpoints, syncs and hands the lease on).
#
# RELAYCTL overrides the relayctl binary (tests run this script on the host with the venv's one).
set -euo pipefail

RELAYCTL=${RELAYCTL:-relayctl}

main() {
  local cmd=${1:-worker}
  case $cmd in
    serve)
      shift
      exec "$RELAYCTL" serve "$@"
      ;;
    worker | -*)
      if [[ ${1:-} == worker ]]; then shift; fi
      local arg
      for arg in "$@"; do
        if [[ $arg == -h || $arg == --help ]]; then exec "$RELAYCTL" worker "$@"; fi
      done
      "$RELAYCTL" worker --check "$@"
      exec "$RELAYCTL" worker "$@"
      ;;
    status | cancel | submit | logs | demo | print-*)
      exec "$RELAYCTL" "$@"
      ;;
    *)
      exec "$@"
      ;;
  esac
}

main "$@"
