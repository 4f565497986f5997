"""A user's own training script, written with no knowledge of the relay: a transformers Trainer with its
own output_dir, save_total_limit=2, resuming from its own last checkpoint when it finds one, and an explicit
final ``save_model`` into a directory of its choosing.

    python user_trainer_script.py MODEL_DIR DATA_JSONL OUTPUT_DIR
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint


class Rows(torch.utils.data.Dataset):
    def __init__(self, path, tok):
        rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
        self.items = [
            tok(r["prompt"] + r["completion"], truncation=True, max_length=32)["input_ids"] for r in rows
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"input_ids": self.items[i]}


def collate(batch, pad_id):
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    for i, b in enumerate(batch):
        ids[i, : len(b["input_ids"])] = torch.tensor(b["input_ids"])
        labels[i, : len(b["input_ids"])] = torch.tensor(b["input_ids"])
    return {"input_ids": ids, "labels": labels, "attention_mask": (labels != -100).long()}


def main(model_dir, data, out):
    set_seed(5)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = TrainingArguments(
        output_dir=out,
        max_steps=10,
        save_steps=3,
        save_total_limit=2,
        logging_steps=2,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        seed=5,
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Rows(data, tok),
        data_collator=lambda b: collate(b, tok.pad_token_id),
        processing_class=tok,
    )
    last = get_last_checkpoint(out) if __import__("os").path.isdir(out) else None
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(f"{out}/my-final-model")
    print("user script: done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
