#!/usr/bin/env bash
# Shared body of launch_sft.sh and launch_rl.sh: pick the trainer for a mode and exec it.
#
#   _launch.sh <sft|rl> [extra args passed to the trainer]
#
# Order: $RELAY_TRAINER_CMD, else its mode aliases $SLIME_SFT_CMD / $SLIME_RL_CMD (run with `bash -c`, with
# trainer_blackbox/inject first on PYTHONPATH so any transformers Trainer in it is instrumented, unless
# RELAY_INSTRUMENT=0), else RELAY_TRAINER=mock (the mock trainer), else the built-in trainer of the mode,
# through torchrun when more than one GPU is visible.
# Every branch ends in `exec`, so the process the worker started *is* the trainer (same pid) and its
# signals (SIGTERM: save now and exit 0) reach the trainer directly.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: _launch.sh <sft|rl> [args...]" >&2
  exit 2
fi
mode="$1"
shift

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${RELAY_PYTHON:-python3}"

case "$mode" in
  sft) alias_var=SLIME_SFT_CMD ;;
  rl) alias_var=SLIME_RL_CMD ;;
  *)
    echo "relay launcher: unknown mode '$mode' (expected sft or rl)" >&2
    exit 2
    ;;
esac

export RELAY_MODE="${RELAY_MODE:-$mode}"
# Make sure the contract variables reach the trainer even if the caller only set them in this shell.
export RELAY_RUN_ID RELAY_EPOCH RELAY_OUTPUT_DIR RELAY_RESUME_FROM RELAY_PROGRESS_FILE RELAY_TRAIN_CONFIG
export RELAY_FINAL_DIR="${RELAY_FINAL_DIR:-}"

custom="${RELAY_TRAINER_CMD:-}"
from=RELAY_TRAINER_CMD
if [[ -z "$custom" ]]; then
  custom="${!alias_var:-}"
  from="$alias_var"
fi
if [[ -n "$custom" ]]; then
  case "${RELAY_INSTRUMENT:-1}" in
    0 | off | false | no) how="not instrumented (RELAY_INSTRUMENT=${RELAY_INSTRUMENT})" ;;
    *)
      export PYTHONPATH="$here/inject${PYTHONPATH:+:$PYTHONPATH}"
      how="transformers Trainers instrumented"
      ;;
  esac
  echo "relay launcher: mode=$mode running the command from $from ($how)" >&2
  exec bash -c "$custom" "relay-$mode" "$@"
fi

# The built-in trainers and the mock are modules of this package.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

trainer="${RELAY_TRAINER:-builtin}"
case "$trainer" in
  mock)
    exec "$py" -m trainer_blackbox.mock_trainer "$@"
    ;;
  builtin | "") ;;
  *)
    echo "relay launcher: RELAY_TRAINER='$trainer' is not one of: builtin, mock" >&2
    exit 2
    ;;
esac

# How many processes: RELAY_NPROC wins; else one per visible CUDA GPU; else one.
count_gpus() {
  if [[ -n "${CUDA_VISIBLE_DEVICES+x}" ]]; then
    if [[ -z "$CUDA_VISIBLE_DEVICES" || "$CUDA_VISIBLE_DEVICES" == "-1" ]]; then
      echo 0
    else
      local IFS=,
      # shellcheck disable=SC2086 # word splitting on commas is the point
      set -- $CUDA_VISIBLE_DEVICES
      echo "$#"
    fi
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}
nproc="${RELAY_NPROC:-$(count_gpus)}"
if ! [[ "$nproc" =~ ^[0-9]+$ ]]; then
  echo "relay launcher: RELAY_NPROC must be a whole number (got '$nproc')" >&2
  exit 2
fi

module="trainer_blackbox.$mode"
if ((nproc > 1)); then
  # torchrun forwards SIGTERM to every rank; give the ranks time to save before it would SIGKILL them
  # (the worker's own grace period still bounds the whole shutdown).
  export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}"
  exec "$py" -m trainer_blackbox.dist_launch --standalone --nproc_per_node="$nproc" -m "$module" "$@"
fi
exec "$py" -m "$module" "$@"
