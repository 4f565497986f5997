"""train: block validation, dataset checks, loss masks and the verifiable rewards (in-process, fast)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from relay_testkit.tiny_model import build_tokenizer, write_jsonl
from trainer_blackbox.data import (
    IGNORE_INDEX,
    DatasetError,
    PadCollator,
    check_rl_rows,
    load_sft_rows,
    parse_hub_spec,
    read_jsonl,
    tokenize_sft,
)
from trainer_blackbox.rewards import build_rewards, extract_answer
from trainer_blackbox.rl import check_group_sizes
from trainer_blackbox.train_config import (
    MANAGED_KEYS,
    TrainConfigError,
    load_train_config,
    validate_train_block,
)

BASE = {"model": "m", "dataset": "d.jsonl"}


@pytest.mark.parametrize(
    ("kind", "block", "expected"),
    [
        (
            "sft",
            {**BASE, "learning_rte": 1e-4},
            "train.learning_rte: unknown key (did you mean 'learning_rate'?)",
        ),
        ("sft", {**BASE, "lora": {"rank": 8}}, "train.lora.rank: unknown key"),
        (
            "rl",
            {**BASE, "rewards": [{"type": "exact_match", "wieght": 2}]},
            "train.rewards[0].wieght: unknown key",
        ),
        (
            "rl",
            {**BASE, "num_generation": 4},
            "train.num_generation: unknown key (did you mean 'num_generations'?)",
        ),
        ("sft", {"dataset": "d.jsonl"}, "train.model: required"),
        ("sft", {**BASE, "max_seq_length": 2}, "train.max_seq_length:"),
        ("sft", {**BASE, "warmup_ratio": 0.1, "warmup_steps": 5}, "warmup_ratio or warmup_steps"),
        ("rl", {**BASE, "rewards": [{"type": "format", "pattern": "("}]}, "not a valid regular expression"),
        ("rl", {**BASE, "rewards": [{"type": "bleu"}]}, "train.rewards[0].type"),
        ("mock", {"max_steps": 2, "model": "x"}, "train.model: unknown key"),
    ],
)
def test_bad_train_blocks_name_the_key(kind: str, block: dict, expected: str) -> None:
    with pytest.raises(TrainConfigError) as info:
        validate_train_block(block, kind)  # type: ignore[arg-type]
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg


@pytest.mark.parametrize("key", sorted(MANAGED_KEYS))
def test_relay_managed_keys_are_refused_with_a_reason(key: str) -> None:
    with pytest.raises(TrainConfigError, match=f"train.{key}: not configurable here: "):
        validate_train_block({**BASE, key: 1}, "sft")


def test_training_arguments_use_transformers_names() -> None:
    cfg = validate_train_block(
        {**BASE, "max_steps": 10, "warmup_ratio": 0.1, "gradient_checkpointing": True, "learning_rate": 1e-4},
        "sft",
    )
    args = cfg.training_arguments()
    assert args == {
        "max_steps": 10,
        "warmup_steps": 0.1,
        "activation_checkpointing": True,
        "learning_rate": 1e-4,
    }
    from transformers import TrainingArguments

    fields = set(TrainingArguments.__dataclass_fields__)
    assert set(args) <= fields
    every = {k for k in type(cfg).model_fields if k in fields}
    assert every >= {
        "max_steps",
        "save_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "seed",
    }


def test_rl_defaults_and_grpo_keys_exist_in_trl() -> None:
    cfg = validate_train_block({**BASE, "num_generations": 4, "beta": 0.1}, "rl")
    assert [r.type for r in cfg.rewards] == ["exact_match", "format"]
    from trl import GRPOConfig

    assert set(cfg.grpo_arguments()) <= set(GRPOConfig.__dataclass_fields__)


def test_group_size_must_divide_generation_batch() -> None:
    cfg = validate_train_block({**BASE, "num_generations": 3, "per_device_train_batch_size": 4}, "rl")
    with pytest.raises(TrainConfigError, match="train.num_generations: 3 must divide"):
        check_group_sizes(cfg, world=1)
    check_group_sizes(
        validate_train_block({**BASE, "num_generations": 4, "per_device_train_batch_size": 2}, "rl"), 2
    )


def test_load_train_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="cannot be read"):
        load_train_config(tmp_path / "missing.json", "sft")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TrainConfigError, match="is not JSON"):
        load_train_config(bad, "sft")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({**BASE, "max_steps": 3}))
    assert load_train_config(good, "sft").max_steps == 3


# ------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (['{"messages": []}'], "line 1: 'messages' must be a non-empty list"),
        (['{"messages": [{"role": "user", "content": "hi"}]}'], "line 1: no assistant message"),
        (['{"prompt": "a", "completion": "b"}', "{oops"], "line 2: not valid JSON"),
        (['{"text": "a"}'], "line 1: expected 'messages' or 'prompt' + 'completion' (keys: text)"),
        (["[1, 2]"], "line 1: expected a JSON object"),
        (['{"prompt": "a", "completion": ""}'], "line 1: empty 'completion'"),
        (['{"prompt": "a", "completion": 3}'], "line 1: 'prompt' and 'completion' must both be strings"),
        (
            ['{"prompt": "a", "completion": "b"}', '{"messages": [{"role": "assistant", "content": "x"}]}'],
            "mixes chat 'messages' rows and plain",
        ),
        ([""], "no rows"),
    ],
)
def test_dataset_errors_are_one_clear_line(tmp_path: Path, lines: list[str], needle: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as info:
        load_sft_rows(str(path))
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_missing_dataset_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset: file not found"):
        load_sft_rows(str(tmp_path / "nope.jsonl"))


def test_rl_rows_need_prompt_and_answer(tmp_path: Path) -> None:
    rows = read_jsonl(
        write_jsonl(tmp_path / "r.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?"}])
    )
    with pytest.raises(DatasetError, match="line 2: missing 'answer'"):
        check_rl_rows(rows, tmp_path / "r.jsonl", answer_fields={"answer"})
    check_rl_rows(rows, tmp_path / "r.jsonl", answer_fields=set())


def test_hub_dataset_spec() -> None:
    h = parse_hub_spec("hf://datasets/me/data@v1/sub/train.jsonl")
    assert (h.repo_id, h.filename, h.repo_type, h.revision) == ("me/data", "sub/train.jsonl", "dataset", "v1")
    h = parse_hub_spec("hf://me/data/train.jsonl")
    assert (h.repo_id, h.filename, h.repo_type, h.revision) == ("me/data", "train.jsonl", "dataset", None)
    assert parse_hub_spec("hf://models/me/m/x.jsonl").repo_type == "model"
    with pytest.raises(DatasetError, match="is not hf://"):
        parse_hub_spec("hf://me/data")


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer()


def _labelled_text(tokenizer, ex) -> str:  # type: ignore[no-untyped-def]
    return tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX])


def test_chat_loss_covers_assistant_turns_only(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    row = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "<answer>5</answer>"},
            {"role": "user", "content": "And 4 + 4?"},
            {"role": "assistant", "content": "<answer>8</answer>"},
        ]
    }
    path = write_jsonl(tmp_path / "c.jsonl", [row])
    rows, kind, _ = load_sft_rows(str(path))
    (ex,), dropped = tokenize_sft(tokenizer, rows, kind, 512, path)
    assert dropped == 0 and kind == "messages"
    assert _labelled_text(tokenizer, ex) == "<answer>5</answer><|end|><answer>8</answer><|end|>"
    assert len(ex["labels"]) == len(ex["input_ids"])
    assert all(lab in (IGNORE_INDEX, tok) for lab, tok in zip(ex["labels"], ex["input_ids"], strict=True))


def test_prompt_completion_loss_covers_completion_and_eos(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "What is 1 + 1? ", "completion": "<answer>2</answer>"}]
    )
    rows, kind, _ = load_sft_rows(str(path))
    (ex,), _ = tokenize_sft(tokenizer, rows, kind, 512, path)
    assert kind == "prompt_completion"
    assert _labelled_text(tokenizer, ex) == "<answer>2</answer><|end|>"
    assert ex["labels"][0] == IGNORE_INDEX


def test_truncated_away_completions_are_dropped(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    long_prompt = "the quick brown fox jumps over the lazy dog " * 10
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [{"prompt": long_prompt, "completion": "yes"}, {"prompt": "hi ", "completion": "yes"}],
    )
    rows, kind, _ = load_sft_rows(str(path))
    examples, dropped = tokenize_sft(tokenizer, rows, kind, 16, path)
    assert (len(examples), dropped) == (1, 1)
    with pytest.raises(DatasetError, match="raise train.max_seq_length"):
        tokenize_sft(tokenizer, rows[:1], kind, 16, path)


def test_chat_rows_need_a_chat_template(tmp_path: Path) -> None:
    tok = build_tokenizer()
    tok.chat_template = None
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "assistant", "content": "x"}]}])
    rows, kind, _ = load_sft_rows(str(path))
    with pytest.raises(DatasetError, match="no chat template; set train.chat_template"):
        tokenize_sft(tok, rows, kind, 64, path)


def test_pad_collator() -> None:
    batch = PadCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [9], "labels": [9]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [9, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# ---------------------------------------------------------------------------------------- rewards


def test_exact_match_and_format_rewards() -> None:
    funcs, weights = build_rewards(
        [{"type": "exact_match", "weight": 1.0}, {"type": "format", "weight": 0.25}]
    )
    exact, fmt = funcs
    completions = [
        "<answer>12</answer>",
        "it is 12",
        "<answer>12.0</answer>",
        "<answer>13</answer>",
        "nothing",
    ]
    answers = ["12"] * 5
    assert exact(completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert fmt(completions) == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert weights == [1.0, 0.25]
    chat = [[{"role": "assistant", "content": "<answer>3</answer>"}]]
    assert exact(chat, answer=["3"]) == [1.0]
    assert exact.__name__ == "exact_match" and fmt.__name__ == "format"


def test_custom_answer_pattern_and_field() -> None:
    (exact,), _ = build_rewards([{"type": "exact_match", "pattern": r"#### (\S+)", "answer_field": "target"}])
    assert exact(["work... #### 42", "42"], target=["42", "42"]) == [1.0, 0.0]
    assert extract_answer("a 1 b 2") == "2"


@pytest.mark.parametrize(("name", "kind"), [("train_sft.yaml", "sft"), ("train_rl.yaml", "rl")])
def test_example_train_configs_validate(name: str, kind: str) -> None:
    import yaml

    block = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / name).read_text())["train"]
    validate_train_block(block, kind)  # type: ignore[arg-type]


def test_deepspeed_examples_are_json_and_resolve_from_the_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer_blackbox.hf_runtime import check_deepspeed

    monkeypatch.chdir(tmp_path)
    for stage in ("zero2", "zero3"):
        cfg = validate_train_block({**BASE, "deepspeed": f"configs/deepspeed/{stage}.json"}, "sft")
        path = Path(check_deepspeed(cfg))
        assert path.is_file() and json.loads(path.read_text())["zero_optimization"]["stage"] == int(stage[-1])
    with pytest.raises(TrainConfigError, match="train.deepspeed: file not found"):
        check_deepspeed(validate_train_block({**BASE, "deepspeed": "nope.json"}, "sft"))


def test_transformers_own_checks_become_config_errors(tmp_path: Path) -> None:
    from transformers import TrainingArguments

    from trainer_blackbox.hf_runtime import build_args

    with pytest.raises(TrainConfigError, match=r"^train: .*bogus") as info:
        build_args(TrainingArguments, output_dir=str(tmp_path), lr_scheduler_type="bogus")
    assert "\n" not in str(info.value)


def test_missing_deepspeed_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test command installs deepspeed; a pod image built without the extra is what this stands in for
    # (a None entry makes both the import and importlib.util.find_spec say "not installed").
    from trainer_blackbox.hf_runtime import check_deepspeed

    monkeypatch.setitem(sys.modules, "deepspeed", None)
    for ds in ("configs/deepspeed/zero2.json", {"zero_optimization": {"stage": 2}}):
        cfg = validate_train_block({**BASE, "deepspeed": ds}, "sft")
        with pytest.raises(
            TrainConfigError, match=r"^train.deepspeed is set but the deepspeed package is not"
        ):
            check_deepspeed(cfg)
    assert check_deepspeed(validate_train_block(BASE, "sft")) is None  # not asked for: not needed
