"""The ``train:`` block, validated before anything heavy is imported or loaded.

One pydantic model per trainer kind: ``SFTTrainConfig`` (built-in SFT), ``RLTrainConfig`` (built-in GRPO)
and ``MockTrainConfig`` (the mock, built from the mock's own key table so the two never disagree).  Keys
use transformers' ``TrainingArguments`` names wherever one exists, so a user's existing HF config reads
the same here.  An unknown key is an error naming it (with a close match when there is one), because a
silently ignored typo such as ``learning_rte`` costs a whole run.  Keys that relay itself owns
(``output_dir``, ``save_total_limit``, ``logging_steps`` ...) are refused with the reason.

A ``None`` value means "transformers' / TRL's own default": only keys that are set are passed on.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from trainer_blackbox.mock_trainer import MOCK_KEYS

TrainerKind = Literal["sft", "rl", "mock"]


class TrainConfigError(ValueError):
    """A bad ``train:`` block; str() is one line naming every problem (``problems`` lists them)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


# Keys that exist in TrainingArguments but that relay sets itself: refusing them with the reason beats
# silently overriding what the user wrote.
MANAGED_KEYS: dict[str, str] = {
    "output_dir": "checkpoints go to RELAY_OUTPUT_DIR, set by the worker",
    "overwrite_output_dir": "checkpoints go to RELAY_OUTPUT_DIR, set by the worker",
    "resume_from_checkpoint": "the worker passes the checkpoint to resume from in RELAY_RESUME_FROM",
    "save_strategy": "relay saves every save_steps steps, at the end and on SIGTERM",
    "save_total_limit": "the worker moves committed checkpoints away and prunes them (keep_last_n)",
    "save_only_model": "exact resume needs the optimizer, scheduler and RNG state in every checkpoint",
    "logging_strategy": "relay writes one progress line per optimizer step",
    "logging_steps": "relay writes one progress line per optimizer step",
    "push_to_hub": "the worker syncs committed checkpoints to the remote",
    "hub_model_id": "the worker syncs committed checkpoints to the remote",
    "load_best_model_at_end": "relay keeps the latest checkpoints, not the best",
    "enable_jit_checkpoint": "relay's callback saves on SIGTERM",
    "local_rank": "set by torchrun",
    "ignore_data_skip": "exact resume skips the data already seen",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    """LoRA adapters through peft; only the adapters train (and are saved in checkpoints)."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    lora_alpha: int = Field(32, ge=1, description="Scaling numerator (scale = lora_alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field("all-linear", description="Module names, or 'all-linear'.")
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = Field(None, description="Extra modules trained in full and saved.")


class TrainingKeys(_Strict):
    """transformers ``TrainingArguments`` names (None: transformers' default)."""

    max_steps: int | None = Field(None, description="Optimizer steps to run; wins over num_train_epochs.")
    num_train_epochs: float | None = Field(
        None, gt=0, description="Passes over the data when max_steps is unset."
    )
    save_steps: int | float | None = Field(
        None, gt=0, description="Checkpoint every N optimizer steps (< 1: a fraction of the total)."
    )
    per_device_train_batch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    lr_scheduler_type: str | None = Field(
        None, description="linear, cosine, constant, constant_with_warmup ..."
    )
    lr_scheduler_kwargs: dict[str, Any] | None = None
    warmup_ratio: float | None = Field(
        None, ge=0, le=1, description="Warm-up as a fraction of the total steps."
    )
    warmup_steps: float | None = Field(
        None, ge=0, description="Warm-up steps (< 1: a fraction of the total)."
    )
    weight_decay: float | None = Field(None, ge=0)
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    adam_epsilon: float | None = None
    max_grad_norm: float | None = Field(None, ge=0)
    optim: str | None = Field(None, description="Optimizer name as in TrainingArguments (adamw_torch, ...).")
    optim_args: str | None = None
    seed: int | None = Field(
        None, description="Seed of model init, data order and sampling (exact resume keeps it)."
    )
    data_seed: int | None = None
    bf16: bool | None = Field(
        None, description="Mixed precision bf16. Unset: bf16 where the GPU supports it."
    )
    fp16: bool | None = Field(None, description="Mixed precision fp16. Unset: fp16 on GPUs without bf16.")
    tf32: bool | None = None
    gradient_checkpointing: bool | None = Field(None, description="Recompute activations to save memory.")
    gradient_checkpointing_kwargs: dict[str, Any] | None = None
    activation_checkpointing: bool | None = Field(
        None, description="transformers 5 name of gradient_checkpointing."
    )
    activation_checkpointing_kwargs: dict[str, Any] | None = None
    dataloader_num_workers: int | None = Field(None, ge=0)
    dataloader_pin_memory: bool | None = None
    torch_compile: bool | None = None
    torch_compile_mode: str | None = None
    torch_empty_cache_steps: int | None = Field(None, ge=1)
    ddp_timeout: int | None = Field(None, ge=1)
    ddp_find_unused_parameters: bool | None = None
    average_tokens_across_devices: bool | None = None
    use_liger_kernel: bool | None = None
    full_determinism: bool | None = None
    neftune_noise_alpha: float | None = None
    label_smoothing_factor: float | None = None
    report_to: str | list[str] | None = Field(None, description="Experiment trackers (default: none).")
    run_name: str | None = None
    use_cpu: bool | None = None

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainingKeys:
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError("set warmup_ratio or warmup_steps, not both")
        if self.gradient_checkpointing is not None and self.activation_checkpointing is not None:
            raise ValueError("set gradient_checkpointing or activation_checkpointing, not both")
        return self

    def training_arguments(self) -> dict[str, Any]:
        """The set keys, renamed to what the installed transformers accepts (warmup_ratio -> warmup_steps)."""
        out = {
            k: v for k, v in self.model_dump(include=set(TrainingKeys.model_fields)).items() if v is not None
        }
        if "warmup_ratio" in out:  # transformers 5: warmup_steps < 1 is a ratio
            out["warmup_steps"] = out.pop("warmup_ratio")
        if "gradient_checkpointing" in out:
            out["activation_checkpointing"] = out.pop("gradient_checkpointing")
        if "gradient_checkpointing_kwargs" in out:
            out["activation_checkpointing_kwargs"] = out.pop("gradient_checkpointing_kwargs")
        return out


class ModelKeys(_Strict):
    """What to train on what: the model, the data, adapters, DeepSpeed."""

    model: str = Field(..., description="Local directory or Hugging Face Hub model id.")
    dataset: str = Field(
        ...,
        description="JSONL file: a local path, or hf://[datasets/]owner/repo[@revision]/path/in/repo.jsonl.",
    )
    model_revision: str | None = Field(None, description="Hub revision of the model.")
    model_dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="dtype the weights are loaded in (float32 master weights + autocast by default).",
    )
    attn_implementation: str | None = Field(
        None, description="sdpa, eager, flash_attention_2 ... (default: sdpa)."
    )
    trust_remote_code: bool = False
    chat_template: str | None = Field(None, description="Jinja chat template for tokenizers that lack one.")
    lora: LoraSettings | None = Field(None, description="LoRA adapters (peft); unset: full fine-tuning.")
    deepspeed: str | dict[str, Any] | None = Field(
        None, description="DeepSpeed config: a JSON file (see configs/deepspeed/) or an inline mapping."
    )


class SFTTrainConfig(TrainingKeys, ModelKeys):
    """Built-in SFT: transformers Trainer on chat ``messages`` or ``prompt``/``completion`` JSONL."""

    max_seq_length: int = Field(1024, ge=8, description="Longer examples are truncated on the right.")


class RewardSpec(_Strict):
    """A verifiable reward: ``exact_match`` (extracted answer == the row's answer) or ``format``."""

    type: Literal["exact_match", "format"]
    weight: float = 1.0
    pattern: str | None = Field(
        None,
        description="exact_match: regex whose group 1 is the answer (default <answer>(.*?)</answer>, then the "
        "last number); format: regex the whole completion must match (default <answer>...</answer>).",
    )
    answer_field: str = Field(
        "answer", description="exact_match: dataset column holding the reference answer."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


def _default_rewards() -> list[RewardSpec]:
    return [RewardSpec(type="exact_match", weight=1.0), RewardSpec(type="format", weight=0.1)]


# GRPO keys handed to TRL's GRPOConfig under the same names.
GRPO_KEYS = (
    "num_generations",
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "beta",
    "epsilon",
    "epsilon_high",
    "num_iterations",
    "loss_type",
    "scale_rewards",
    "steps_per_generation",
    "generation_batch_size",
    "mask_truncated_completions",
    "disable_dropout",
    "use_vllm",
    "vllm_mode",
    "vllm_gpu_memory_utilization",
)


class RLTrainConfig(TrainingKeys, ModelKeys):
    """Built-in RL: GRPO (TRL's GRPOTrainer) with verifiable rewards on ``prompt`` + ``answer`` JSONL."""

    rewards: list[RewardSpec] = Field(default_factory=_default_rewards, min_length=1)
    num_generations: int = Field(8, ge=2, description="Completions sampled per prompt (the GRPO group).")
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = None
    beta: float = Field(
        0.04, ge=0, description="KL coefficient to the reference model (0: no reference, no kl)."
    )
    epsilon: float | None = Field(None, gt=0, description="Clip range of the policy ratio.")
    epsilon_high: float | None = None
    num_iterations: int | None = Field(None, ge=1, description="Policy updates per generated batch.")
    loss_type: str | None = Field(None, description="TRL loss_type: dapo, grpo, dr_grpo, bnpo ...")
    scale_rewards: str | bool | None = None
    steps_per_generation: int | None = Field(None, ge=1)
    generation_batch_size: int | None = Field(None, ge=1)
    mask_truncated_completions: bool | None = None
    disable_dropout: bool | None = None
    use_vllm: bool | None = None
    vllm_mode: str | None = None
    vllm_gpu_memory_utilization: float | None = None

    def grpo_arguments(self) -> dict[str, Any]:
        """The set GRPO keys, for GRPOConfig."""
        return {k: getattr(self, k) for k in GRPO_KEYS if getattr(self, k) is not None}


def _mock_model() -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, (types, default, doc) in MOCK_KEYS.items():
        annotation: Any = types[0]
        for t in types[1:]:
            annotation = annotation | t
        bounds: dict[str, int] = {}
        if bool not in types:
            bounds["ge"] = 1 if name.endswith("_at_step") else 0
        fields[name] = (annotation, Field(default, description=doc, **bounds))
    return create_model("MockTrainConfig", __config__=ConfigDict(extra="forbid", strict=True), **fields)


MockTrainConfig = _mock_model()

MODELS: dict[str, type[BaseModel]] = {"sft": SFTTrainConfig, "rl": RLTrainConfig, "mock": MockTrainConfig}


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub)model a location points into, for 'did you mean'."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        for c in candidates:
            inner = getattr(c, "__args__", ())
            for t in (c, *inner):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    current = t
                    break
    return list(getattr(current, "model_fields", {}))


def _problem(model: type[BaseModel], err: Any) -> str:
    """One validation error as ``train.key: what is wrong``."""
    loc = tuple(err.get("loc", ()))
    where = "train" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        if len(loc) == 1 and key in MANAGED_KEYS:
            return f"{where}: not configurable here: {MANAGED_KEYS[key]}"
        close = difflib.get_close_matches(key, _known_keys(model, loc), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{where}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{where}: required"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:
        return f"train: {msg}"
    return f"{where}: {msg} (got {err.get('input')!r})"


def _format_error(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """Every problem of the block, one line each: a user fixes them all in one go, not one per run."""
    return [_problem(model, err) for err in exc.errors()]


def validate_train_block(block: Any, kind: TrainerKind) -> Any:
    """Validate a ``train:`` mapping for ``kind``; raise TrainConfigError (one line) when it is wrong."""
    if kind not in MODELS:
        raise TrainConfigError(f"unknown trainer kind {kind!r} (expected sft, rl or mock)")
    if not isinstance(block, dict):
        raise TrainConfigError(f"train: must be a mapping (got {type(block).__name__})")
    model = MODELS[kind]
    try:
        return model.model_validate(block)
    except ValidationError as exc:
        problems = _format_error(model, exc)
        raise TrainConfigError("; ".join(problems), problems) from None


def load_train_config(path: Path | str | None, kind: TrainerKind) -> Any:
    """Read RELAY_TRAIN_CONFIG (JSON) and validate it for ``kind``."""
    if path is None:
        raise TrainConfigError("RELAY_TRAIN_CONFIG is not set: the built-in trainers need a train: block")
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrainConfigError(f"RELAY_TRAIN_CONFIG cannot be read: {p}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise TrainConfigError(f"RELAY_TRAIN_CONFIG is not JSON: {p}: {exc}") from None
    return validate_train_block(data if data is not None else {}, kind)
