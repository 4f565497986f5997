"""Built-in SFT: transformers' Trainer on chat ``messages`` or ``prompt``/``completion`` JSONL.

Run by ``launch_sft.sh`` (``python -m trainer_blackbox.sft``; one process per GPU under torchrun).
The loss covers completion / assistant tokens only.  Checkpoints hold everything exact resume needs
(weights, optimizer, scheduler, RNG of every rank, trainer state with the data position); the data order
is a pure function of the seed and the epoch, so a resumed run sees the batches the uninterrupted run
would have seen.  Contract: trainer_blackbox/README.md.
"""

from __future__ import annotations

import time

from trainer_blackbox.data import load_sft_rows, tokenize_sft
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
)
from trainer_blackbox.train_config import SFTTrainConfig, load_train_config

PROG = "relay-sft"


def train() -> int:
    t_start = time.time()
    env = activate_relay(PROG).env  # SIGTERM handler; every Trainer built from here on is instrumented
    # 1. Everything that can be wrong in the environment, the config or the data: no torch yet.
    cfg: SFTTrainConfig = load_train_config(env.train_config, "sft")
    check_model_ref(cfg)
    check_resume_dir(env)
    deepspeed = check_deepspeed(cfg)
    rows, kind, data_path = load_sft_rows(cfg.dataset)
    configure_runtime()

    # 2. Tokenizer and tokenized data: still no model.
    tokenizer = load_tokenizer(cfg)
    examples, dropped = tokenize_sft(tokenizer, rows, kind, cfg.max_seq_length, data_path)
    if dropped and is_world_zero():
        print(f"{PROG}: dropped {dropped} rows whose completion lies beyond max_seq_length", flush=True)

    # TrainingArguments before the model: its own checks are config errors too, and DeepSpeed ZeRO-3
    # must be configured before from_pretrained so that the weights load partitioned.
    from transformers import Trainer, TrainingArguments

    from trainer_blackbox.data import PadCollator

    args = build_args(
        TrainingArguments,
        **relay_training_arguments(cfg, env),
        deepspeed=deepspeed,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
    )

    # 3. Model, Trainer, train.
    seed_everything(cfg)
    model = load_model(cfg)
    peft_cfg = lora_config(cfg)
    if peft_cfg is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_cfg)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    if is_world_zero():
        resume = f" from {env.resume_from}" if env.resume_from else ""
        print(
            f"{PROG}: {len(examples)} examples, model {cfg.model}, start{resume} "
            f"(setup {time.time() - t_start:.1f}s)",
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
