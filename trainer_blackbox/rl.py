"""Built-in RL: GRPO with verifiable rewards, on TRL's GRPOTrainer.

Run by ``launch_rl.sh`` (``python -m trainer_blackbox.rl``; one process per GPU under torchrun).  The data
is JSONL with a ``prompt`` (a string, or chat messages) and the reference ``answer`` for the exact-match
reward; rewards and their weights come from ``train.rewards``.  TRL's GRPOTrainer is a transformers
Trainer, so the relay's instrumentation (relay_inject) gives it the contract (progress lines with
``reward`` and ``kl``, save-and-exit-0 on SIGTERM, COMPLETE after every rank saved), and its checkpoints carry the RNG
states that sampling draws from: a run stopped and resumed samples the same completions as one that
was never stopped.  Contract: trainer_blackbox/README.md.
"""

from __future__ import annotations

import time
from typing import Any

from trainer_blackbox.data import load_rl_rows
from trainer_blackbox.hf_runtime import (
    activate_relay,
    build_args,
    check_deepspeed,
    check_model_ref,
    check_resume_dir,
    configure_runtime,
    exit_process,
    is_world_zero,
    load_model,
    load_tokenizer,
    lora_config,
    relay_training_arguments,
    run_main,
    seed_everything,
    world_size,
)
from trainer_blackbox.rewards import build_rewards
from trainer_blackbox.train_config import RLTrainConfig, TrainConfigError, load_train_config

PROG = "relay-rl"


def check_group_sizes(cfg: RLTrainConfig, world: int) -> None:
    """GRPO needs whole groups in every generation batch; say so before any model loads."""
    per_device = cfg.per_device_train_batch_size or 8
    steps_per_gen = cfg.steps_per_generation or cfg.gradient_accumulation_steps or 1
    gen_batch = cfg.generation_batch_size or per_device * steps_per_gen * world
    if gen_batch % cfg.num_generations:
        raise TrainConfigError(
            f"train.num_generations: {cfg.num_generations} must divide the generation batch "
            f"({gen_batch} = per_device_train_batch_size {per_device} x steps_per_generation {steps_per_gen} "
            f"x {world} process(es))"
        )


def to_prompt(row: dict[str, Any], chat: bool) -> Any:
    prompt = row["prompt"]
    if isinstance(prompt, str) and chat:
        return [{"role": "user", "content": prompt}]
    return prompt


def train() -> int:
    t_start = time.time()
    env = activate_relay(PROG).env  # SIGTERM handler; every Trainer built from here on is instrumented
    # 1. Environment, config, data: no torch yet.
    cfg: RLTrainConfig = load_train_config(env.train_config, "rl")
    check_model_ref(cfg)
    check_resume_dir(env)
    deepspeed = check_deepspeed(cfg)
    check_group_sizes(cfg, world_size())
    answer_fields = {r.answer_field for r in cfg.rewards if r.type == "exact_match"}
    rows, data_path = load_rl_rows(cfg.dataset, answer_fields=answer_fields)
    reward_funcs, reward_weights = build_rewards(cfg.rewards)

    configure_runtime()

    # 2. Tokenizer, dataset, GRPOConfig: still no model.
    tokenizer = load_tokenizer(cfg)
    chat = bool(getattr(tokenizer, "chat_template", None))
    if not chat and any(isinstance(r["prompt"], list) for r in rows):
        raise TrainConfigError(
            f"train.chat_template: dataset {data_path} has chat prompts but the tokenizer has no chat template"
        )
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    records = []
    for r in rows:
        rec = {"prompt": to_prompt(r, chat)}
        for field in answer_fields:
            rec[field] = str(r[field])
        records.append(rec)
    dataset = Dataset.from_list(records)

    targs = relay_training_arguments(cfg, env)
    targs.setdefault("activation_checkpointing", True)  # TRL's GRPO default, under its transformers 5 name
    args = build_args(
        GRPOConfig,
        **targs,
        **cfg.grpo_arguments(),
        deepspeed=deepspeed,
        reward_weights=reward_weights,
        model_init_kwargs={"revision": cfg.model_revision} if cfg.model_revision else None,
    )

    # 3. Model, trainer, train.
    seed_everything(cfg)
    model = load_model(cfg)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
    )
    if is_world_zero():
        resume = f" from {env.resume_from}" if env.resume_from else ""
        print(
            f"{PROG}: {len(records)} prompts x {cfg.num_generations} generations, model {cfg.model}, "
            f"start{resume} (setup {time.time() - t_start:.1f}s)",
            flush=True,
        )
    # Resume (RELAY_RESUME_FROM) and SIGTERM (save this step, exit 0) are the instrumentation's.
    trainer.train()
    if env.final_dir is not None:  # the run's deliverable: weights or adapters, tokenizer, config
        trainer.save_model()
    if is_world_zero():
        print(f"{PROG}: exit 0 at step {trainer.state.global_step} (done)", flush=True)
    return 0


def main() -> int:
    return run_main(PROG, train)


if __name__ == "__main__":
    exit_process(main())
