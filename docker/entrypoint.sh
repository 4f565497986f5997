#!/usr/bin/env bash
# relay-trainer container entrypoint: one image, two roles.
#
#   entrypoint.sh serve [ARGS]    the commander (`relayctl serve ARGS`), on a CPU box
#   entrypoint.sh [worker] [ARGS] a worker on a GPU pod (the default): check the environment
#                                 and the volume, then exec `relayctl worker ARGS`
#   entrypoint.sh status|cancel|submit|logs|demo|print-*  any other relayctl command
#   entrypoint.sh CMD [ARGS]      anything else is exec'd as is (e.g. `bash`)
#
# Why check here at all: a pod that starts with a typo in COMMANDER_URL or without its volume
# would otherwise burn GPU time until the worker trips over it. Each problem is ONE line on
# stderr and exit status 2, before anything is acquired. The checks cover what `docker run -e`
# can get wrong; the worker validates its full config (RELAY_RUN_CONFIG) again, with the same rules.
#
# The worker is exec'd, not run as a child, so the SIGTERM that a pod gets at preemption reaches
# it directly (it then checkpoints, syncs and hands the lease on).
#
# RELAYCTL overrides the relayctl binary (tests run this script on the host with the venv's one).
set -euo pipefail

RELAYCTL=${RELAYCTL:-relayctl}

fail() {
  printf 'entrypoint: %s\n' "$*" >&2
  exit 2
}

warn() {
  printf 'entrypoint: warning: %s\n' "$*" >&2
}

# The id rule of relay/ids.py: 1-128 of A-Z a-z 0-9 . _ -, and not "." or "..".
check_id() {
  local name=$1 value=$2
  local LC_ALL=C
  if [[ ! $value =~ ^[A-Za-z0-9._-]{1,128}$ ]]; then
    fail "$name must be 1-128 characters of A-Z a-z 0-9 . _ - (got '$value')"
  fi
  if [[ $value == "." || $value == ".." ]]; then
    fail "$name must not be '.' or '..'"
  fi
}

# The Hub repo rule of relay/urls.py (check_repo_id): owner/name, each part 1-96 of
# A-Z a-z 0-9 . _ - starting with a letter or digit, and no ".." or "--" anywhere.
valid_repo() {
  local LC_ALL=C
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$ && $1 != *..* && $1 != *--* ]]
}

check_worker_env() {
  # With a config file, keys may come from the YAML instead of the environment, so only the
  # values that ARE set are checked here; the worker reports a missing key itself.
  local LC_ALL=C from_file=0
  if [[ -n ${RELAY_RUN_CONFIG:-} ]]; then
    [[ -f $RELAY_RUN_CONFIG && -r $RELAY_RUN_CONFIG ]] ||
      fail "RELAY_RUN_CONFIG=$RELAY_RUN_CONFIG is not a readable file"
    from_file=1
  fi

  local url=${COMMANDER_URL:-}
  if [[ -z $url ]]; then
    ((from_file)) || fail "COMMANDER_URL is required (e.g. http://<cpu-server>:8080)"
  elif [[ ! $url =~ ^https?://[^/[:space:]]+ || $url =~ [[:space:]] ]]; then
    fail "COMMANDER_URL must be an http:// or https:// URL (got '$url')"
  fi

  if [[ -n ${RUN_ID:-} ]]; then
    check_id RUN_ID "$RUN_ID"
  fi
  if [[ -n ${WORKER_ID:-} ]]; then
    check_id WORKER_ID "$WORKER_ID"
  fi

  local mode=${MODE:-}
  if [[ -z $mode ]]; then
    ((from_file)) || fail "MODE is required: sft or rl"
  elif [[ $mode != sft && $mode != rl ]]; then
    fail "MODE must be sft or rl (got '$mode')"
  fi

  local remote=${RELAY_REMOTE:-} repo=${HF_REPO:-}
  if [[ -n $repo ]]; then
    valid_repo "$repo" || fail "HF_REPO must be owner/name (got '$repo')"
    if [[ -n $remote && $remote != "hf://$repo" ]]; then
      fail "HF_REPO and RELAY_REMOTE disagree ('$repo' vs '$remote'); set only one"
    fi
    remote="hf://$repo"
  fi
  if [[ -z $remote ]]; then
    ((from_file)) || fail "HF_REPO (owner/name) or RELAY_REMOTE (hf://owner/name or file:///path) is required"
  elif [[ $remote == hf://* ]]; then
    valid_repo "${remote#hf://}" || fail "RELAY_REMOTE must be hf://owner/name (got '$remote')"
    [[ -n ${HF_TOKEN:-} ]] ||
      fail "HF_TOKEN is required to sync checkpoints to $remote (a token with write access)"
  elif [[ $remote == file:///* ]]; then
    :
  else
    fail "RELAY_REMOTE must start with hf:// or file:/// (got '$remote')"
  fi

  if [[ -z ${RELAY_SHARED_SECRET:-} ]]; then
    ((from_file)) || fail "RELAY_SHARED_SECRET is required (the commander's --shared-secret)"
  fi
}

# The volume: RELAY_ROOT must exist (or be creatable) and take a write. Checked by writing,
# because a read-only or root-owned mount passes every `test -w` guess on some filesystems.
check_volume() {
  local root=$RELAY_ROOT
  [[ $root == /* ]] || fail "RELAY_ROOT must be an absolute path (got '$root')"
  if ! mkdir -p -- "$root" 2>/dev/null; then
    fail "RELAY_ROOT=$root does not exist and cannot be created; mount a volume (e.g. -v HOST_DIR:/mnt)"
  fi
  local probe
  probe="$root/.relay-write-probe.$$"
  if ! (printf 'probe\n' >"$probe") 2>/dev/null; then
    rm -f -- "$probe" 2>/dev/null || true
    fail "RELAY_ROOT=$root is not writable by uid $(id -u); check the volume's mount and permissions"
  fi
  rm -f -- "$probe"
  # Same device as / means no volume is mounted there: it still works (the remote keeps the
  # checkpoints), but everything local dies with the container.
  local root_dev vol_dev
  root_dev=$(stat -c %d / 2>/dev/null || echo "?")
  vol_dev=$(stat -c %d "$root" 2>/dev/null || echo "?")
  if [[ $root_dev != "?" && $root_dev == "$vol_dev" ]]; then
    warn "RELAY_ROOT=$root is on the container's own filesystem (no volume mounted?); local checkpoints die with the container"
  fi
}

main() {
  local cmd=${1:-worker}
  case $cmd in
    serve)
      shift
      exec "$RELAYCTL" serve "$@"
      ;;
    worker | -*)
      if [[ ${1:-} == worker ]]; then shift; fi
      export RELAY_ROOT=${RELAY_ROOT:-/mnt/relay}
      check_worker_env
      check_volume
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
