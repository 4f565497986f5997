"""What the built-in SFT and RL trainers share: the main wrapper, precision, model/tokenizer/LoRA loading
and the TrainingArguments relay controls.

The order in every built-in trainer is fixed: parse the environment and the ``train:`` block, read and
check the dataset (no torch yet), load the tokenizer, tokenize, and only then load the model.  Every
mistake a user can make in the config or the data fails in seconds with exit code 2 and one line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import relay_inject
from relay_inject.checkpoint import PARTIAL_DIRNAME
from relay_inject.env import EnvError, RelayEnv
from relay_inject.stop import exit_process

from trainer_blackbox.data import DatasetError
from trainer_blackbox.train_config import ModelKeys, TrainConfigError, TrainingKeys

__all__ = ["exit_process"]  # re-exported: the built-in trainers end through it

EXIT_USER_ERROR = 2


class ModelLoadError(ValueError):
    """The model or tokenizer named in the config cannot be loaded."""


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a trainer body; user errors become one line on stderr and exit code 2 (never a traceback)."""
    try:
        code = body()
    except (EnvError, TrainConfigError, DatasetError, ModelLoadError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    _destroy_process_group()
    return code


def activate_relay(prog: str) -> relay_inject.Runtime:
    """The relay instrumentation (relay_inject), the same code third-party trainers get injected: the
    SIGTERM handler now, and every transformers Trainer built afterwards follows the contract (staged
    checkpoints + COMPLETE, resume from RELAY_RESUME_FROM, save-and-exit-0 on SIGTERM, progress lines)."""
    return relay_inject.activate(prog)


def is_world_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _destroy_process_group() -> None:
    """Tear the process group down while every rank is still here (they end training at the same step:
    the stop flag is all-reduced), so no peer is left waiting on a store or a collective."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def configure_runtime() -> None:
    """Respect OMP_NUM_THREADS for torch's intra-op pool (tests run several trainers on 2 cores) and keep
    per-file progress bars out of the trainer log the worker captures."""
    import torch
    from transformers.utils import logging as hf_logging

    n = os.environ.get("OMP_NUM_THREADS", "").strip()
    if n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))
    hf_logging.disable_progress_bar()


def check_resume_dir(env: RelayEnv) -> None:
    """A resume source must be an HF Trainer checkpoint (the worker's manifest/COMPLETE are ignored)."""
    if env.resume_from is not None and not (env.resume_from / "trainer_state.json").is_file():
        raise EnvError(
            f"RELAY_RESUME_FROM={env.resume_from} holds no trainer_state.json (not a checkpoint of this trainer)"
        )


def check_deepspeed(cfg: ModelKeys) -> Any:
    """The DeepSpeed config as TrainingArguments wants it; a missing or broken file, or no deepspeed package
    (transformers would fail on it with a bare TypeError deep inside TrainingArguments), is a config error."""
    if cfg.deepspeed is None:
        return None
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise TrainConfigError(
            "train.deepspeed is set but the deepspeed package is not installed "
            "(pip install 'relay-trainer[deepspeed]'; the Docker image has it)"
        )
    if isinstance(cfg.deepspeed, dict):
        return cfg.deepspeed
    path = Path(cfg.deepspeed).expanduser()
    if not path.is_absolute() and not path.is_file():  # e.g. configs/deepspeed/zero2.json from the repo
        in_repo = Path(__file__).resolve().parent.parent / path
        path = in_repo if in_repo.is_file() else path
    if not path.is_file():
        raise TrainConfigError(f"train.deepspeed: file not found: {path}")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainConfigError(f"train.deepspeed: {path} is not a JSON file: {exc}") from None
    return str(path)


def check_model_ref(cfg: ModelKeys) -> None:
    """A model given as a filesystem path must exist (a Hub id is checked when the tokenizer loads)."""
    ref = cfg.model
    if ref.startswith(("/", "./", "../", "~")) and not Path(ref).expanduser().is_dir():
        raise TrainConfigError(f"train.model: no such directory: {ref}")


def resolve_precision(cfg: TrainingKeys) -> dict[str, bool]:
    """bf16 where the GPU supports it, fp16 on older CUDA GPUs, fp32 on CPU; explicit keys win."""
    import torch

    if cfg.bf16 is not None or cfg.fp16 is not None:
        return {"bf16": bool(cfg.bf16), "fp16": bool(cfg.fp16)}
    if torch.cuda.is_available() and not cfg.use_cpu:
        if torch.cuda.is_bf16_supported():
            return {"bf16": True, "fp16": False}
        return {"bf16": False, "fp16": True}
    return {"bf16": False, "fp16": False}


def load_tokenizer(cfg: ModelKeys) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            cfg.model, revision=cfg.model_revision, trust_remote_code=cfg.trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001 - missing path, unknown Hub id, offline...: one message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"train.model: cannot load a tokenizer from {cfg.model!r}: {first}") from None
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def seed_everything(cfg: TrainingKeys) -> None:
    """Seed before the model and any adapters are created: LoRA's random init must not differ between a
    run and its resumed twin (the resumed one loads the adapters anyway, but an uninterrupted reference
    run must be reproducible)."""
    from transformers import set_seed

    set_seed(cfg.seed if cfg.seed is not None else 42)


def load_model(cfg: ModelKeys) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtype: Any = "auto" if cfg.model_dtype == "auto" else getattr(torch, cfg.model_dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.model_revision:
        kwargs["revision"] = cfg.model_revision
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"train.model: cannot load {cfg.model!r}: {first}") from None
    return model


def lora_config(cfg: ModelKeys) -> Any | None:
    """A peft LoraConfig for ``train.lora``, or None for full fine-tuning."""
    if cfg.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **cfg.lora.model_dump(exclude_none=True))


def relay_training_arguments(cfg: TrainingKeys, env: RelayEnv) -> dict[str, Any]:
    """The user's TrainingArguments keys plus the ones relay owns (see train_config.MANAGED_KEYS).

    ``output_dir`` is where the end-of-training export goes (RELAY_FINAL_DIR); checkpoints are redirected
    to the staging directory by the instrumentation whatever it says."""
    kwargs = cfg.training_arguments()
    kwargs.update(resolve_precision(cfg))
    kwargs.setdefault("report_to", "none")
    kwargs.setdefault("dataloader_num_workers", 0)
    kwargs.setdefault("ddp_find_unused_parameters", False)  # a causal LM uses every parameter
    if not _cuda_available():
        kwargs.setdefault("dataloader_pin_memory", False)
        kwargs.setdefault("use_cpu", True)  # also what makes accelerate run DDP over gloo under torchrun
    kwargs.update(
        output_dir=str(env.final_dir or env.output_dir / PARTIAL_DIRNAME),  # no final dir: no export
        save_strategy="steps",
        save_total_limit=None,
        logging_strategy="steps",
        logging_steps=1,
        disable_tqdm=True,
        ignore_data_skip=False,
        save_only_model=False,
    )
    return kwargs


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _deepspeed_world(deepspeed: Any) -> None:
    """Give DeepSpeed a world of one when the trainer was started without torchrun (one GPU, or the CPU).

    DeepSpeed always runs under torch.distributed.  Started as a plain process it finds none of torchrun's
    rendezvous variables and falls back to MPI discovery, which fails without mpi4py; a single-rank
    loopback rendezvous is what ``deepspeed --num_gpus 1`` would set up.  Called by ``build_args``.
    """
    if deepspeed is None or "WORLD_SIZE" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))


def _init_deepspeed_group(args: Any) -> None:
    """Create the process group before the model is loaded when DeepSpeed is on.

    ZeRO-3 partitions the weights inside ``from_pretrained`` (``deepspeed.zero.Init``) and sizes the
    partitions by the world it sees then; TrainingArguments only creates the group lazily, on first use
    of ``args.device``, which would be after the model was loaded whole on every rank.  accelerate
    initialises DeepSpeed's own comm layer only on GPUs, so it is initialised here too (a no-op when it
    already is): without it ``zero.Init`` sees a world of one on CPU ranks.
    """
    if not getattr(args, "deepspeed", None):
        return
    _ = args.device
    import deepspeed

    deepspeed.init_distributed(auto_mpi_discovery=False)


def build_args(cls: Any, **kwargs: Any) -> Any:
    """``TrainingArguments``/``GRPOConfig`` from kwargs; their own consistency checks become config errors.

    With ``deepspeed`` set, the process group exists when this returns (see ``_init_deepspeed_group``).
    """
    _deepspeed_world(kwargs.get("deepspeed"))
    try:
        args = cls(**kwargs)
    except ImportError as exc:  # e.g. train.deepspeed without the deepspeed package
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainConfigError(
            f"train: a package this configuration needs is not installed: {first}"
        ) from None
    except ValueError as exc:
        raise TrainConfigError(f"train: {str(exc).strip().splitlines()[0]}") from None
    _init_deepspeed_group(args)
    return args


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1
