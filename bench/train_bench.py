"""Checkpoint cost in training: the relay's async saves against the HF Trainer's synchronous save.

Suites (``--suite``, default ``pause,relayed``):

  pause    One process, one model, one run (a child process, so the bench itself never holds the device):
           a plain transformers Trainer trains ``warmup`` steps, then three phases of ``phase_steps``
           steps each: no checkpoints; a checkpoint every ``save_every`` steps by the HF Trainer's own
           synchronous ``_save_checkpoint``; the same through the relay's async saving
           (relay_inject.hf_save, the code every instrumented Trainer runs).  Then the device->host copy
           floor of the same state: one contiguous copy of that many bytes into pre-allocated (page-locked
           on CUDA) host memory, the best of 3.
             pause_s      extra wall time a checkpoint adds to its step (the step interval after the save
                          minus the median interval without one; a CUDA sync at every step end), median
                          over the phase's saves; the async phase's first save (host buffers allocated)
                          is shown on its own
             tokens_per_s each phase's tokens over its wall time (the async phase ends when its last
                          checkpoint is on disk)
             ratios       async pause / copy floor (target <= 2), sync pause / async pause
  relayed  Three runs of the same training, each its own process, checkpoints every ``save_every``
           steps: ``bare`` (a plain transformers Trainer, no relay, its own synchronous saves), ``sync``
           (the built-in SFT through trainer_blackbox/launch_sft.sh with RELAY_ASYNC_SAVE=0: the HF save,
           then fsync and COMPLETE), ``async`` (the built-in SFT as shipped).  Steady and end-to-end
           tokens/s, the save pause (from the progress lines, as the worker measures it), peak device
           memory (torch's max allocated) and peak host memory (VmHWM) of each.
  worker   The built-in SFT under ``python -m relay.worker`` (real commander subprocess, file:// remote)
           against the same trainer run bare: tokens/s ratio (target >= 0.98) and the worker's own CPU.

Presets:

  cpu        a small random Llama (3.3M parameters, 40 MB of state); runs here in a few minutes on 2 cores.
             Its copy floor is ~5 ms, less than the fixed Python of the Trainer's own save path (config,
             generation config, tokenizer and training-args files, accelerate's unwrap: ~15 ms, the same
             for any model size), so its async pause is several times its floor whatever the copy costs.
  cpu-large  a random Llama of 63M parameters (0.76 GB of state: a 32k vocabulary, 2 wide layers) trained on
             32-token rows, so a step stays under a second on one core: the copy, not that fixed Python, is
             most of a save, as on the GPU reference.  The pause target is measured here on a CPU.
  0.5b       a random 0.47B Llama trained in bf16 autocast with fp32 master weights and AdamW, sequence
             2048, batch 8: 5.6 GB of state, the issue's GPU reference (80,400 tokens/s bare, a 6.9 s HF
             save pause, a 0.10 s copy floor on an H200).

Usage::

    .venv/bin/python bench/train_bench.py [--preset cpu|cpu-large|0.5b] [--suite pause,relayed,worker] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "hidden": 256,
        "layers": 4,
        "heads": 4,
        "intermediate": 688,
        "vocab": 300,
        "seq_len": 128,
        "batch": 4,
        "warmup": 3,
        "phase_steps": 9,  # pause suite: steps per phase, ``cycles`` x (none, sync, async)
        "save_every": 3,
        "cycles": 2,
        "steps": 16,  # relayed / worker runs: steps, checkpoint every save_steps
        "save_steps": 5,
        "threads": 1,  # OMP threads per trainer: a shared 2-core box runs 1 thread each far more steadily
    },
    "cpu-large": {  # the copy, not the Trainer's fixed Python, is most of a save: as on the GPU reference
        "hidden": 768,
        "layers": 2,
        "heads": 8,
        "intermediate": 2048,
        "vocab": 32000,
        "seq_len": 32,
        "batch": 1,
        "warmup": 3,
        "phase_steps": 12,
        "save_every": 4,  # ~1.8 s apart: the previous save's write has ended by then here
        "cycles": 2,
        "steps": 30,
        "save_steps": 10,  # the relayed runs' writes took 2.6-3.0 s here: every 5, a save waited for the last
        "threads": 1,
    },
    "0.5b": {
        "hidden": 1024,
        "layers": 24,
        "heads": 16,
        "intermediate": 4096,
        "vocab": 32000,
        "seq_len": 2048,
        "batch": 8,
        "warmup": 8,
        "phase_steps": 20,
        "save_every": 10,
        "cycles": 3,
        "steps": 40,
        "save_steps": 15,
        "threads": None,
    },
}
WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud light".split()


# ------------------------------------------------------------------------------------------- assets


def build_assets(root: Path, p: dict[str, Any]) -> tuple[Path, Path]:
    """A random Llama of the preset's shape with the tiny BPE tokenizer, and rows that fill seq_len."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer_blackbox.tiny import build_tokenizer, write_jsonl

    model_dir = root / "model"
    tok = build_tokenizer(model_dir)
    cfg = LlamaConfig(
        vocab_size=max(p["vocab"], len(tok)),
        hidden_size=p["hidden"],
        intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["heads"],
        max_position_embeddings=max(2048, p["seq_len"]),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(model_dir))
    n_params = sum(t.numel() for t in model.parameters())
    del model
    rng = random.Random(0)
    rows = []
    n_rows = p["batch"] * 16
    for _ in range(n_rows):
        # ~1 token per 2-3 characters with this tokenizer: 4 chars per token guarantees truncation at seq_len.
        text = " ".join(rng.choice(WORDS) for _ in range(p["seq_len"]))
        rows.append({"prompt": "Write: ", "completion": text})
    data = write_jsonl(root / "data.jsonl", rows)
    print(
        f"assets: random Llama with {n_params / 1e6:.1f}M parameters, {n_rows} rows of {p['seq_len']} tokens",
        flush=True,
    )
    return model_dir, data


def train_block(model: Path, data: Path, p: dict[str, Any], steps: int, save_steps: int) -> dict[str, Any]:
    return {
        "model": str(model),
        "dataset": str(data),
        "max_steps": steps,
        "save_steps": save_steps,
        "per_device_train_batch_size": p["batch"],
        "max_seq_length": p["seq_len"],
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "seed": 0,
    }


def base_env(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "SLIME_"))}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH", "")])])
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


# --------------------------------------------------------------------------- child: plain Trainer


def build_trainer(train: dict[str, Any], output_dir: Path, **overrides: Any) -> Any:
    """A plain transformers Trainer built exactly as the built-in SFT builds its own (same data, model,
    TrainingArguments), with no relay instrumentation."""
    from relay_inject.env import RelayEnv
    from transformers import Trainer, TrainingArguments

    from trainer_blackbox.data import PadCollator, load_sft_rows, tokenize_sft
    from trainer_blackbox.hf_runtime import (
        build_args,
        configure_runtime,
        load_model,
        load_tokenizer,
        relay_training_arguments,
        seed_everything,
    )
    from trainer_blackbox.train_config import SFTTrainConfig

    cfg = SFTTrainConfig.model_validate(train)
    rows, kind, path = load_sft_rows(cfg.dataset)
    configure_runtime()
    tok = load_tokenizer(cfg)
    examples, _ = tokenize_sft(tok, rows, kind, cfg.max_seq_length, path)
    env = RelayEnv("bench", "sft", 1, output_dir, None, None, None)
    kwargs = relay_training_arguments(cfg, env)
    kwargs.update(output_dir=str(output_dir), **overrides)
    args = build_args(
        TrainingArguments, **kwargs, remove_unused_columns=False, include_num_input_tokens_seen="non_padding"
    )
    seed_everything(cfg)
    model = load_model(cfg)
    return Trainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=PadCollator(tok.pad_token_id),
        processing_class=tok,
    )


def _sync_device() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_memory() -> dict[str, float]:
    """Peak device memory torch allocated and the process's peak resident host memory, in GB."""
    import torch

    out = {"host_peak_gb": 0.0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["host_peak_gb"] = int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    if torch.cuda.is_available():
        out["device_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def _clock_callback(on_end: Any) -> Any:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """Step-end times (after a device sync) and tokens seen."""

        def __init__(self) -> None:
            self.begins: dict[int, float] = {}
            self.ends: dict[int, float] = {}
            self.tokens: dict[int, int] = {}

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.begins[state.global_step + 1] = time.monotonic()
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            _sync_device()
            self.ends[state.global_step] = time.monotonic()
            self.tokens[state.global_step] = int(state.num_input_tokens_seen or 0)
            on_end(self, state, control)
            return control

    return Clock()


def child_bare(spec: dict[str, Any]) -> dict[str, Any]:
    """A plain Trainer with its own synchronous saves every ``save_steps``: progress-style lines."""
    out = Path(spec["work"])
    progress = (out / "progress.jsonl").open("w")
    pauses: list[float] = []

    def on_end(clock: Any, state: Any, control: Any) -> None:
        step = state.global_step
        line = {"step": step, "ts": time.time(), "tokens_seen": clock.tokens[step]}
        if pauses:  # what the relay's progress lines call save_pause_s: the save call, start to end
            line["save_pause_s"] = pauses.pop()
        progress.write(json.dumps(line) + "\n")
        progress.flush()

    trainer = build_trainer(spec["train"], out / "hf", save_strategy="steps", save_total_limit=2)
    trainer.add_callback(_clock_callback(on_end))
    handler, save, on_save, t0 = trainer.callback_handler, trainer._save_checkpoint, None, [0.0]

    def timed_save(*a: Any, **kw: Any) -> Any:
        t0[0] = time.monotonic()
        return save(*a, **kw)

    def timed_on_save(*a: Any, **kw: Any) -> Any:
        control = on_save(*a, **kw)
        pauses.append(time.monotonic() - t0[0])
        return control

    on_save = handler.on_save
    trainer._save_checkpoint, handler.on_save = timed_save, timed_on_save
    trainer.train()
    return _peak_memory()


def _state_bytes(trainer: Any) -> int:
    """Bytes of the tensors a checkpoint holds: model state and optimizer state (each storage once)."""
    import torch

    seen: dict[tuple[str, int], int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            seen[(str(t.device), s.data_ptr())] = s.nbytes()

    for t in trainer.model.state_dict().values():
        add(t)
    for state in trainer.optimizer.state.values():
        for t in state.values():
            add(t)
    return sum(seen.values())


def copy_floor_s(nbytes: int) -> float:
    """One contiguous device->host copy of ``nbytes`` into pre-allocated host memory (page-locked on CUDA):
    the physical floor of a training pause that copies the state off the device.  Best of 3."""
    import torch

    cuda = torch.cuda.is_available()
    src = torch.ones(nbytes, dtype=torch.uint8, device="cuda" if cuda else "cpu")
    dst = torch.zeros(nbytes, dtype=torch.uint8, pin_memory=cuda)
    best = float("inf")
    for _ in range(4):  # the first is a warm-up
        _sync_device()
        t0 = time.monotonic()
        dst.copy_(src, non_blocking=cuda)
        _sync_device()
        best = min(best, time.monotonic() - t0)
    del src, dst
    return best


def plan_phases(p: dict[str, Any]) -> list[tuple[str, int, int, list[int]]]:
    """(mode, first step, last step, steps saved after) for each phase: none, sync, async, ``cycles`` times
    over (alternating spreads the drift of a shared machine evenly).  A save's pause lands in the next
    step's interval, so no phase saves at its last step."""
    w, n, every = p["warmup"], p["phase_steps"], p["save_every"]
    out = []
    for i, mode in enumerate(["none", "sync", "async"] * p["cycles"]):
        first, last = w + i * n + 1, w + (i + 1) * n
        saves = [] if mode == "none" else [first - 1 + k * every for k in range(1, n // every)]
        out.append((mode, first, last, saves))
    return out


def child_pause(spec: dict[str, Any]) -> dict[str, Any]:
    """Phases none / sync (HF) / async (relay) in one run of one Trainer, then the copy floor."""
    import relay_inject
    from relay_inject.env import RelayEnv
    from relay_inject.hf import RelayCallback
    from relay_inject.hf_save import CheckpointSaving

    p, out = spec["preset"], Path(spec["work"])
    phases = plan_phases(p)
    save_at = {s for *_, saves in phases for s in saves}
    next_mode = {last: phases[i + 1][0] for i, (_, _, last, _) in enumerate(phases[:-1])}
    async_ends = {last for mode, _, last, _ in phases if mode == "async"}
    train = dict(spec["train"], max_steps=phases[-1][2])
    trainer = build_trainer(train, out / "hf", save_strategy="no")
    handler = trainer.callback_handler
    hf_save = (trainer._save_checkpoint, handler.on_save)
    rt = relay_inject.Runtime(RelayEnv("bench", "sft", 1, out / "relay", None, None, None), "train-bench")
    saving = CheckpointSaving(trainer, rt, RelayCallback(rt))
    saving.install()  # the relay's wrappers around the HF save; each phase picks one or the other
    relay_save = (trainer._save_checkpoint, handler.on_save)
    trainer._save_checkpoint, handler.on_save = hf_save

    phase_done: dict[int, float] = {}

    def on_end(clock: Any, st: Any, control: Any) -> None:
        step = st.global_step
        control.should_save = step in save_at
        if step in async_ends:  # an async phase ends when its last checkpoint is on disk
            saving.flush()
        if step in next_mode or step == phases[-1][2]:
            phase_done[step] = time.monotonic()
            for old in [*(out / "hf").glob("checkpoint-*"), *(out / "relay").glob("step_*")]:
                shutil.rmtree(old)  # GBs each on the 0.5b preset; not counted in either phase
            clock.ends[step] = time.monotonic()
        if step in next_mode:
            trainer._save_checkpoint, handler.on_save = relay_save if next_mode[step] == "async" else hf_save

    clock = _clock_callback(on_end)
    trainer.add_callback(clock)
    trainer.train()
    ends, begins, tokens = clock.ends, clock.begins, clock.tokens
    result: dict[str, Any] = {
        "pauses_s": {"sync": [], "async": []},
        "blocked_s": {"sync": [], "async": []},
        "tokens": {},
        "seconds": {},
        "normal": [],
        "intervals": [],
    }
    for mode, first, last, saves in phases:
        intervals = {s: ends[s] - ends[s - 1] for s in range(first, last + 1)}
        gaps = {s: begins[s] - ends[s - 1] for s in range(first, last + 1)}  # step end -> next step begin
        plain = [s for s in intervals if s - 1 not in saves and s != last]
        normal = statistics.median(intervals[s] for s in plain)
        normal_gap = statistics.median(gaps[s] for s in plain)
        result["normal"].append(normal)
        result["intervals"].append([mode, [round(intervals[s], 4) for s in sorted(intervals)]])
        result["pauses_s"].get(mode, []).extend(intervals[s + 1] - normal for s in saves)
        result["blocked_s"].get(mode, []).extend(gaps[s + 1] - normal_gap for s in saves)
        result["tokens"][mode] = result["tokens"].get(mode, 0) + tokens[last] - tokens[first - 1]
        result["seconds"][mode] = result["seconds"].get(mode, 0.0) + phase_done[last] - ends[first - 1]
    nbytes = _state_bytes(trainer)
    assert saving.saver is not None
    result.update(
        host_copy_gb=saving.saver.buffers.held_bytes / 1e9,
        pinned=saving.saver.buffers.pin,
        state_gb=nbytes / 1e9,
        copy_floor_s=copy_floor_s(nbytes),
    )
    return result


# ------------------------------------------------------------------------------------------ measure


def read_progress(path: Path) -> list[dict[str, Any]]:
    from trainer_blackbox.progress import read_progress as _read

    return _read(path)


def measure(lines: list[dict[str, Any]], warmup: int, save_steps: int) -> dict[str, float]:
    """Steady-state and end-to-end tokens/s and the save pause, from one run's progress lines."""
    lines = sorted({x["step"]: x for x in lines}.values(), key=lambda x: x["step"])
    lines = [x for x in lines if x["step"] >= warmup]
    if len(lines) < 3:
        raise RuntimeError(f"too few progress lines after warm-up ({len(lines)})")
    intervals = []  # (tokens, seconds, follows_save)
    for prev, cur in zip(lines, lines[1:], strict=False):
        intervals.append(
            (cur["tokens_seen"] - prev["tokens_seen"], cur["ts"] - prev["ts"], prev["step"] % save_steps == 0)
        )
    steady = [(t, s) for t, s, after_save in intervals if not after_save]
    saves = [s for _, s, after_save in intervals if after_save]
    step_s = statistics.median(s for _, s in steady)
    return {
        "tokens_per_s": sum(t for t, _ in steady) / sum(s for _, s in steady),
        "e2e_tokens_per_s": sum(t for t, _, _ in intervals) / sum(s for _, s, _ in intervals),
        "step_s": step_s,
        "save_pause_s": statistics.median(s - step_s for s in saves) if saves else float("nan"),
    }


def run_child(kind: str, spec: dict[str, Any], threads: int | None, timeout: float) -> dict[str, Any]:
    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", str(work / "spec.json")]
    with open(work / "child.log", "wb") as log:
        rc = subprocess.run(
            cmd, env=base_env(threads), stdout=log, stderr=subprocess.STDOUT, timeout=timeout
        ).returncode
    if rc != 0:
        raise RuntimeError(f"{kind} child exited {rc}:\n{(work / 'child.log').read_text()[-3000:]}")
    return json.loads((work / "result.json").read_text())


def run_relayed(
    work: Path, train: dict[str, Any], *, async_save: bool, threads: int | None, timeout: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The built-in SFT through its launcher with the RELAY_* variables a worker would set."""
    from relay_testkit.trainer_env import with_pythonpath

    work.mkdir(parents=True)
    (work / "train_config.json").write_text(json.dumps(train))
    env = with_pythonpath(base_env(threads), REPO / "relay_testkit" / "inject_plugins")
    env.update(
        RELAY_RUN_ID="bench",
        RELAY_MODE="sft",
        RELAY_EPOCH="1",
        RELAY_OUTPUT_DIR=str(work / "staging"),
        RELAY_RESUME_FROM="",
        RELAY_PROGRESS_FILE=str(work / "progress.jsonl"),
        RELAY_TRAIN_CONFIG=str(work / "train_config.json"),
        RELAY_PYTHON=sys.executable,
        RELAY_ASYNC_SAVE="1" if async_save else "0",
        RELAY_INJECT_PLUGINS="relay_bench_memory",
        RELAY_BENCH_MEMORY_FILE=str(work / "memory.json"),
    )
    with open(work / "trainer.log", "wb") as log:
        rc = subprocess.run(
            ["bash", str(REPO / "trainer_blackbox" / "launch_sft.sh")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        ).returncode
    if rc != 0:
        raise RuntimeError(f"relayed trainer exited {rc}:\n{(work / 'trainer.log').read_text()[-3000:]}")
    return read_progress(work / "progress.jsonl"), json.loads((work / "memory.json").read_text())


# ------------------------------------------------------------------------------------------- suites


def suite_pause(root: Path, p: dict[str, Any], train: dict[str, Any], args: Any) -> dict[str, Any]:
    spec = {"preset": p, "train": train, "work": str(root / "pause")}
    r = run_child("pause", spec, args.threads, args.timeout)
    sync, asyn = r["pauses_s"]["sync"], r["pauses_s"]["async"]
    blocked = r["blocked_s"]
    tps = {mode: r["tokens"][mode] / r["seconds"][mode] for mode in r["tokens"]}
    out = {
        "state_gb": r["state_gb"],
        "copy_floor_s": r["copy_floor_s"],
        "step_s": statistics.median(r["normal"]),
        "hf_sync_pause_s": statistics.median(sync),
        "async_pause_s": statistics.median(asyn[1:] or asyn),
        "async_first_pause_s": asyn[0],
        "hf_sync_blocked_s": statistics.median(blocked["sync"]),
        "async_blocked_s": statistics.median(blocked["async"][1:] or blocked["async"]),
        "async_host_copy_gb": r["host_copy_gb"],
        "async_host_pinned": r["pinned"],
        "checkpoint_every_steps": p["save_every"],
        "tokens_per_s_no_checkpoints": tps["none"],
        "tokens_per_s_hf_sync": tps["sync"],
        "tokens_per_s_async": tps["async"],
    }
    out["async_pause_over_copy_floor"] = out["async_pause_s"] / out["copy_floor_s"]
    out["hf_sync_pause_over_async_pause"] = out["hf_sync_pause_s"] / max(out["async_pause_s"], 1e-9)
    out["async_over_hf_sync_tokens_per_s"] = out["tokens_per_s_async"] / out["tokens_per_s_hf_sync"]
    print(
        "pause: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items() if isinstance(v, float)),
        flush=True,
    )
    return out


def suite_relayed(root: Path, p: dict[str, Any], train: dict[str, Any], args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"relayed_steps": train["max_steps"], "relayed_save_steps": train["save_steps"]}
    for kind in ("bare", "sync", "async"):
        t0 = time.monotonic()
        work = root / f"relayed-{kind}"
        if kind == "bare":
            memory = run_child("bare", {"train": train, "work": str(work)}, args.threads, args.timeout)
            lines = read_progress(work / "progress.jsonl")
        else:
            lines, memory = run_relayed(
                work, train, async_save=kind == "async", threads=args.threads, timeout=args.timeout
            )
        m = measure(lines, p["warmup"], train["save_steps"])
        blocked = [x["save_pause_s"] for x in lines if isinstance(x.get("save_pause_s"), (int, float))]
        m["save_blocked_s"] = statistics.median(blocked) if blocked else float("nan")
        for key, value in {**m, **memory}.items():
            out[f"{kind}_{key}"] = value
        print(
            f"relayed {kind:5s}: {m['tokens_per_s']:9.0f} tok/s steady, {m['e2e_tokens_per_s']:9.0f} e2e, "
            f"save pause {m['save_pause_s']:.3f}s (in the save call {m['save_blocked_s']:.3f}s) "
            f"(run {time.monotonic() - t0:.0f}s)",
            flush=True,
        )
        shutil.rmtree(work / "hf", ignore_errors=True)  # checkpoints of a large model: GBs each
        shutil.rmtree(work / "staging", ignore_errors=True)
    out["async_over_sync_e2e_tokens_per_s"] = out["async_e2e_tokens_per_s"] / out["sync_e2e_tokens_per_s"]
    out["async_over_bare_e2e_tokens_per_s"] = out["async_e2e_tokens_per_s"] / out["bare_e2e_tokens_per_s"]
    return out


def suite_worker(root: Path, p: dict[str, Any], train: dict[str, Any], args: Any) -> dict[str, Any]:
    """The built-in SFT under a real worker against the same launcher run bare (best of --repeat)."""
    results: dict[str, list[dict[str, float]]] = {"bare": [], "worker": []}
    for i in range(args.repeat):
        for kind in ("bare", "worker"):
            work = root / f"worker-suite-{kind}-{i}"
            if kind == "bare":
                lines, _ = run_relayed(
                    work, train, async_save=True, threads=args.threads, timeout=args.timeout
                )
            else:
                lines = run_worker(work, train, args.threads, args.timeout)
            results[kind].append(measure(lines, p["warmup"], train["save_steps"]))
    out: dict[str, Any] = {}
    for kind, runs in results.items():
        for key in ("tokens_per_s", "e2e_tokens_per_s"):
            out[f"{kind}_{key}"] = max(r[key] for r in runs)
    out["worker_ratio"] = out["worker_tokens_per_s"] / out["bare_tokens_per_s"]
    out["worker_e2e_ratio"] = out["worker_e2e_tokens_per_s"] / out["bare_e2e_tokens_per_s"]
    if WORKER_CPU:
        out["worker_process_cpu_fraction"] = statistics.median(WORKER_CPU)
    return out


def run_worker(work: Path, train: dict[str, Any], threads: int | None, timeout: float) -> list[dict]:
    """The same trainer under ``python -m relay.worker`` with a real commander and a file:// remote."""
    from relay_testkit.commander_proc import CommanderProcess
    from relay_testkit.workerproc import WorkerProc

    work.mkdir(parents=True)
    remote = work / "remote"
    remote.mkdir()
    env = {"RELAY_TRAINER": "builtin", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with CommanderProcess(work / "commander.db") as commander:
        worker = WorkerProc(
            work / "pod",
            commander_url=commander.url,
            run_id="bench-worker",
            worker_id="bench-pod",
            remote=f"file://{remote}",
            train=train,
            settings={"grace_s": 120, "hang_timeout_s": "", "commander_wait_s": 60},
            env=env,
        )
        worker.start()
        t0, cpu_s = time.monotonic(), 0.0
        try:
            while worker.proc is not None and worker.proc.poll() is None:
                cpu_s = _own_cpu_seconds(worker.pid) or cpu_s
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"worker still running after {timeout}s:\n{worker.output()[-4000:]}")
                time.sleep(0.25)
            rc = worker.wait(10)
        finally:
            worker.kill()
        if rc != 0:
            raise RuntimeError(f"worker exited {rc}:\n{worker.output()[-4000:]}")
        WORKER_CPU.append(cpu_s / max(time.monotonic() - t0, 1e-9))
        return worker.progress()


WORKER_CPU: list[float] = []  # the worker process's own CPU time / wall time, per worker run


def _own_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` itself (not its children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SUITES = {"pause": suite_pause, "relayed": suite_relayed, "worker": suite_worker}


# --------------------------------------------------------------------------------------------- main


def child_main(kind: str, spec_path: Path) -> int:
    import trainer_blackbox  # noqa: F401 - relay_inject on the path

    spec = json.loads(spec_path.read_text())
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
    result = child_pause(spec) if kind == "pause" else child_bare(spec)
    (Path(spec["work"]) / "result.json").write_text(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--suite", default="pause,relayed", help="comma-separated: " + ", ".join(SUITES))
    ap.add_argument("--steps", type=int, default=None, help="steps of the relayed/worker runs")
    ap.add_argument("--repeat", type=int, default=2, help="bare/worker pairs of the worker suite")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the trainers (CPU)")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--child", choices=("pause", "bare"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        ap.error(f"unknown suite(s): {', '.join(unknown)} (choose from {', '.join(SUITES)})")

    p = dict(PRESETS[args.preset])
    args.threads = args.threads or p["threads"]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="relay-train-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        model, data = build_assets(root / "assets", p)
        train = train_block(model, data, p, args.steps or p["steps"], p["save_steps"])
        summary: dict[str, Any] = {"preset": args.preset, **{f"config_{k}": v for k, v in p.items()}}
        for name in suites:
            t0 = time.monotonic()
            summary.update(SUITES[name](root, p, train, args))
            print(f"suite {name}: {time.monotonic() - t0:.0f}s", flush=True)
        summary["device"] = _device_name()
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            for key, value in summary.items():
                print(f"{key:36s} {value:.4g}" if isinstance(value, float) else f"{key:36s} {value}")
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
