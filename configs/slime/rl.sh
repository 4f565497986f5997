#!/usr/bin/env bash
# slime RL (GRPO) under the relay:  SLIME_RL_CMD="bash /path/to/relay-trainer/configs/slime/rl.sh"
# (or trainer_cmd: in run.yaml / a run spec, with mode: rl). After slime's scripts/run-qwen3-4B.sh, with the
# checkpoint flags mapped to the relay's (configs/slime/common.sh explains each). PROMPT_DATA (jsonl with
# `prompt` and `label`), the reward model type and the rollout sizes come from the environment.
#
# Progress, preemption: as configs/slime/sft.sh says (the relay step is slime's rollout id; a preemption
# loses the rollouts since the last save).
set -euo pipefail
# shellcheck source=configs/slime/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "$@"
# shellcheck disable=SC1090 # the model's Megatron shape (MODEL_ARGS) from slime's own scripts/models/
source "$SLIME_DIR/scripts/models/$SLIME_MODEL"

ROLLOUT_ARGS=(
  --prompt-data "${PROMPT_DATA:-/root/dapo-math-17k/dapo-math-17k.jsonl}"
  --input-key prompt --label-key label --apply-chat-template --rollout-shuffle
  --rm-type "${RM_TYPE:-deepscaler}"
  --num-rollout "${NUM_ROLLOUT:-3000}"
  --rollout-batch-size "${ROLLOUT_BATCH_SIZE:-32}"
  --n-samples-per-prompt "${N_SAMPLES:-8}"
  --rollout-max-response-len "${MAX_RESPONSE_LEN:-8192}"
  --rollout-temperature 1
  --global-batch-size "${GLOBAL_BATCH_SIZE:-256}"
  --balance-data
)
GRPO_ARGS=(
  --advantage-estimator grpo --use-kl-loss --kl-loss-coef 0.00 --kl-loss-type low_var_kl
  --entropy-coef 0.00 --eps-clip 0.2 --eps-clip-high 0.28
)
OPTIMIZER_ARGS=(
  --optimizer adam --lr "${LR:-1e-6}" --lr-decay-style constant --weight-decay 0.1
  --adam-beta1 0.9 --adam-beta2 0.98
)
PERF_ARGS=(
  --tensor-model-parallel-size "${TP:-2}" --sequence-parallel --pipeline-model-parallel-size 1
  --recompute-granularity full --recompute-method uniform --recompute-num-layers 1
  --use-dynamic-batch-size --max-tokens-per-gpu "${MAX_TOKENS_PER_GPU:-9216}"
)

run_slime train.py \
  --actor-num-nodes 1 --actor-num-gpus-per-node "$NUM_GPUS" --colocate \
  "${MODEL_ARGS[@]}" "${CKPT_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${GRPO_ARGS[@]}" "${OPTIMIZER_ARGS[@]}" \
  "${PERF_ARGS[@]}" --rollout-num-gpus-per-engine "${TP:-2}" --sglang-mem-fraction-static 0.7 \
  --attention-dropout 0.0 --hidden-dropout 0.0 --accumulate-allreduce-grads-in-fp32 \
  --attention-softmax-in-fp32 --attention-backend flash
