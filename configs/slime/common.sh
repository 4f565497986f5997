#!/usr/bin/env bash
# Shared by configs/slime/sft.sh and rl.sh: slime's checkpoint flags from the relay's RELAY_* contract
# (trainer_blackbox/README.md §2, §10). Sourced, not run.
#
#   --load  "$RELAY_RESUME_FROM"  the committed checkpoint to resume from, shaped as Megatron's --load reads
#                                 it (latest_checkpointed_iteration.txt + iter_%07d/); empty on a cold start,
#                                 and slime then starts from --ref-load (the torch_dist conversion of the model)
#   --save  "$RELAY_OUTPUT_DIR"   Megatron writes iter_%07d/ there and latest_checkpointed_iteration.txt last;
#                                 the relay commits each save once the tracker names it and syncs it
#   --save-interval               rollouts between saves (a preemption loses at most this many: see below)
#   --save-hf "$RELAY_FINAL_DIR"  the weights in Hugging Face format at each save; the last one is the run's
#                                 final export, which the relay publishes under <run_id>/final/ at completion
#
# SLIME_DIR (default /root/slime), MEGATRON_DIR (/root/Megatron-LM), SLIME_MODEL (a file of
# scripts/models/, default qwen3-4B.sh), HF_CHECKPOINT, REF_LOAD, SAVE_INTERVAL (default 20), NUM_GPUS
# (default: every visible GPU) come from the pod's environment.
set -euo pipefail

: "${RELAY_OUTPUT_DIR:?run under the relay worker (RELAY_OUTPUT_DIR is not set)}"
SLIME_DIR="${SLIME_DIR:-/root/slime}"
MEGATRON_DIR="${MEGATRON_DIR:-/root/Megatron-LM}"
SLIME_MODEL="${SLIME_MODEL:-qwen3-4B.sh}"
HF_CHECKPOINT="${HF_CHECKPOINT:-/root/Qwen3-4B}"
REF_LOAD="${REF_LOAD:-/root/Qwen3-4B_torch_dist}"
SAVE_INTERVAL="${SAVE_INTERVAL:-20}"
if [[ -z "${NUM_GPUS:-}" ]]; then
  NUM_GPUS="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
fi

# shellcheck disable=SC2034 # used by the recipe that sources this file
CKPT_ARGS=(
  --hf-checkpoint "$HF_CHECKPOINT"
  --ref-load "$REF_LOAD"
  --load "${RELAY_RESUME_FROM:-}"
  --save "$RELAY_OUTPUT_DIR"
  --save-interval "$SAVE_INTERVAL"
  --save-hf "${RELAY_FINAL_DIR:-$RELAY_OUTPUT_DIR/.hf}"
)

# run_slime ENTRY ARGS...: slime's driver as the relay's trainer process. `--print` (first argument of the
# recipe) prints the command instead of running it.
run_slime() {
  local entry="$1"
  shift
  local cmd=(python3 "$SLIME_DIR/$entry" "$@")
  if [[ "${RELAY_RECIPE_PRINT:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    return 0
  fi
  export PYTHONPATH="$MEGATRON_DIR${PYTHONPATH:+:$PYTHONPATH}" CUDA_DEVICE_MAX_CONNECTIONS=1 PYTHONUNBUFFERED=1
  # slime drives its actors through Ray: a head node on this pod, stopped when the driver ends, so
  # nothing outlives the trainer the relay started
  ray start --head --node-ip-address "${MASTER_ADDR:-127.0.0.1}" --num-gpus "$NUM_GPUS" --disable-usage-stats
  trap 'ray stop --force >/dev/null 2>&1 || true' EXIT
  "${cmd[@]}"
}

if [[ "${1:-}" == "--print" ]]; then
  RELAY_RECIPE_PRINT=1
fi
