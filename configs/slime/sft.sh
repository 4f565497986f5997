#!/usr/bin/env bash
# slime SFT under the relay:  SLIME_SFT_CMD="bash /path/to/relay-trainer/configs/slime/sft.sh"
# (or trainer_cmd: in run.yaml / a run spec). After slime's scripts/run-qwen3-4B-base-sft.sh, with the
# checkpoint flags mapped to the relay's (configs/slime/common.sh explains each). SFT_DATA (a parquet or
# jsonl of chat `messages`) and the batch sizes come from the environment.
#
# Progress: the relay reads slime's log lines (`perf N: {...}` once rollout N is trained: the relay step is
# slime's rollout id, as its checkpoints iter_%07d are named) and commits every save; no progress file needed.
# Preemption: slime's Ray driver has no save-on-SIGTERM path of its own (Megatron's --exit-signal-handler
# acts in Megatron's own training loop, which slime does not run): a preemption loses the rollouts since the
# last save, so keep SAVE_INTERVAL small.
set -euo pipefail
# shellcheck source=configs/slime/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"
# shellcheck disable=SC1090 # the model's Megatron shape (MODEL_ARGS) from slime's own scripts/models/
source "$SLIME_DIR/scripts/models/$SLIME_MODEL"

SFT_ARGS=(
  --rollout-function-path slime.rollout.sft_rollout.generate_rollout
  --prompt-data "${SFT_DATA:-/root/openhermes2_5.parquet}"
  --input-key messages
  --rollout-shuffle
  --num-epoch "${NUM_EPOCH:-3}"
  --rollout-batch-size "${ROLLOUT_BATCH_SIZE:-128}"
  --global-batch-size "${GLOBAL_BATCH_SIZE:-128}"
  --loss-type sft_loss
  --calculate-per-token-loss
  --disable-compute-advantages-and-returns
  --debug-train-only
)
OPTIMIZER_ARGS=(
  --optimizer adam --lr "${LR:-1e-5}" --lr-decay-style cosine --min-lr 1e-6 --lr-warmup-fraction 0.1
  --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95
)
PERF_ARGS=(
  --tensor-model-parallel-size "${TP:-1}" --sequence-parallel --pipeline-model-parallel-size 1
  --recompute-granularity full --recompute-method uniform --recompute-num-layers 1
  --use-dynamic-batch-size --max-tokens-per-gpu "${MAX_TOKENS_PER_GPU:-9216}"
)

run_slime train_async.py \
  --actor-num-nodes 1 --actor-num-gpus-per-node "$NUM_GPUS" \
  "${MODEL_ARGS[@]}" "${CKPT_ARGS[@]}" "${SFT_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" "${PERF_ARGS[@]}" \
  --attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 \
  --attention-softmax-in-fp32 --attention-backend flash
